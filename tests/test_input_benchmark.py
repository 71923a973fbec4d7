"""lmim.input_benchmark: the reference does the official pipeline's operations, and the three
pipelines run side by side on generated JPEGs."""
import numpy as np
from PIL import Image

from lmim import input_benchmark as ib
from lmim.data import transforms


def test_the_reference_computes_what_lmims_transform_computes(tmp_path):
  """Same file, same random draws: the reference (PIL + numpy, CHW) and lmim's train transform
  (HWC) give the same crop, flip and normalisation, so the benchmark compares equal work."""
  (path,) = ib.make_jpegs(str(tmp_path), 1)
  for seed in range(4):
    ref = ib._reference_example(path, np.random.default_rng(seed), 64)  # pylint: disable=protected-access
    img = np.asarray(Image.open(path).convert("RGB"))
    ours = transforms.train_transform(img, np.random.default_rng(seed), size=64, mean=ib.IMAGENET_MEAN,
                                      std=ib.IMAGENET_STD, min_crop=0.2)
    np.testing.assert_allclose(ref.transpose(1, 2, 0), ours, rtol=0, atol=1e-5)


def test_three_pipelines_side_by_side(tmp_path):
  r = ib.run(images=24, workers=2, batch=4, size=32, batches=3, workdir=str(tmp_path))
  for name in ("reference", "lmim_folder", "lmim_array_record"):
    assert r[name]["images_per_s"] > 0 and r[name]["images_per_cpu_s"] > 0
  report = ib.format_report(r)
  assert "lmim_array_record" in report and "vs reference" in report
  assert list(tmp_path.iterdir()) == []   # the JPEGs and the dataset were temporary
