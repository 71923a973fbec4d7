"""Preparing datasets without TensorFlow (lmim-prepare): ImageNet from its tars or folders in TFDS's
imagenet2012 layout, any image folder as an array_record dataset, and the one default data dir."""
import io
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import ROOT
from lmim import data
from lmim.data import location, prepare
from lmim.errors import DataNotPreparedError, LmimError

TRAIN_WNIDS = ("n01440764", "n01443537")  # label ids 0 and 1 in TFDS's sorted wnid order


def _encoded(pixels: np.ndarray, fmt: str, mode: str = "RGB") -> bytes:
  out = io.BytesIO()
  Image.fromarray(pixels).convert(mode).save(out, format=fmt, quality=95)
  return out.getvalue()


@pytest.fixture(scope="module")
def ilsvrc(tmp_path_factory):
  """A miniature ILSVRC2012, extracted: RGB, CMYK and grayscale JPEGs, a PNG named .JPEG, and a
  flat val/ labelled by the ground truth that ships with tensorflow_datasets."""
  root = tmp_path_factory.mktemp("ilsvrc")
  rng = np.random.default_rng(0)
  pixels = lambda h=16, w=20: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  yy, xx = np.mgrid[0:12, 0:10]
  smooth = np.stack([yy * 20, xx * 25, (yy + xx) * 10], -1).astype(np.uint8)  # JPEG keeps it closely
  files = {
      f"train/{TRAIN_WNIDS[0]}/{TRAIN_WNIDS[0]}_1.JPEG": _encoded(pixels(), "JPEG"),
      f"train/{TRAIN_WNIDS[0]}/{TRAIN_WNIDS[0]}_2.JPEG": _encoded(pixels(), "JPEG", "CMYK"),
      f"train/{TRAIN_WNIDS[1]}/{TRAIN_WNIDS[1]}_1.JPEG": _encoded(pixels(), "JPEG", "L"),
      f"train/{TRAIN_WNIDS[1]}/{TRAIN_WNIDS[1]}_2.JPEG": _encoded(smooth, "PNG"),
  }
  for i in (1, 2, 3, 40000):
    files[f"val/ILSVRC2012_val_{i:08d}.JPEG"] = _encoded(pixels(), "JPEG")
  for name, content in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(content)
  return root


def _as_tars(extracted, out):
  """The same images as image-net.org ships them: a tar of per-class tars, and a flat val tar."""
  out.mkdir()
  with tarfile.open(out / "ILSVRC2012_img_train.tar", "w") as outer:
    for wnid in TRAIN_WNIDS:
      inner = io.BytesIO()
      with tarfile.open(fileobj=inner, mode="w") as t:
        for f in sorted((extracted / "train" / wnid).iterdir()):
          t.add(f, arcname=f.name)
      info = tarfile.TarInfo(f"{wnid}.tar")
      info.size = len(inner.getvalue())
      outer.addfile(info, io.BytesIO(inner.getvalue()))
  with tarfile.open(out / "ILSVRC2012_img_val.tar", "w") as t:
    for f in sorted((extracted / "val").iterdir()):
      t.add(f, arcname=f.name)


def _by_file_name(data_dir, split):
  src = tfds.data_source("imagenet2012", split=split, data_dir=str(data_dir))
  return {ex["file_name"].decode(): (int(ex["label"]), np.asarray(ex["image"])) for ex in (src[i] for i in range(len(src)))}


def test_imagenet_from_folders_has_tfds_layout_labels_and_rgb_images(ilsvrc, tmp_path):
  where = prepare.prepare_imagenet(str(ilsvrc), str(tmp_path))
  assert where.endswith(os.path.join("imagenet2012", "5.1.0"))
  train, info = data.open_source("imagenet2012", "train", str(tmp_path))
  assert (len(train), info.num_classes, info.channels) == (4, 1000, 3)
  rows = _by_file_name(tmp_path, "train")
  assert {k: v[0] for k, v in rows.items()} == {f"{w}_{i}.JPEG": label for label, w in enumerate(TRAIN_WNIDS)
                                                for i in (1, 2)}
  assert all(img.ndim == 3 and img.shape[-1] == 3 for _, img in rows.values())  # CMYK and PNG made RGB
  with Image.open(io.BytesIO((ilsvrc / "train" / TRAIN_WNIDS[1] / f"{TRAIN_WNIDS[1]}_2.JPEG").read_bytes())) as png:
    expected = np.asarray(png.convert("RGB"), np.float64)
  assert np.abs(rows[f"{TRAIN_WNIDS[1]}_2.JPEG"][1] - expected).mean() < 3  # re-encoded at quality 100
  truth = prepare.imagenet_validation_wnids()
  classes = prepare.imagenet_classes()
  val = _by_file_name(tmp_path, "validation")
  assert {k: v[0] for k, v in val.items()} == {f"ILSVRC2012_val_{i:08d}.JPEG": classes.index(truth[i - 1])
                                               for i in (1, 2, 3, 40000)}


def test_imagenet_from_tars_equals_imagenet_from_folders(ilsvrc, tmp_path):
  _as_tars(ilsvrc, tmp_path / "tars")
  prepare.prepare_imagenet(str(tmp_path / "tars"), str(tmp_path / "from_tars"))
  prepare.prepare_imagenet(str(ilsvrc), str(tmp_path / "from_folders"))
  for split in ("train", "validation"):
    a, b = _by_file_name(tmp_path / "from_tars", split), _by_file_name(tmp_path / "from_folders", split)
    assert a.keys() == b.keys()
    for k in a:
      assert a[k][0] == b[k][0]
      np.testing.assert_array_equal(a[k][1], b[k][1])


def test_validation_sorted_into_class_folders_reads_the_same_labels(ilsvrc, tmp_path):
  truth = prepare.imagenet_validation_wnids()
  (tmp_path / "src" / "val").mkdir(parents=True)
  for f in (ilsvrc / "val").iterdir():
    wnid = truth[int(f.name[15:23]) - 1]
    (tmp_path / "src" / "val" / wnid).mkdir(exist_ok=True)
    (tmp_path / "src" / "val" / wnid / f.name).write_bytes(f.read_bytes())
  prepare.prepare_imagenet(str(tmp_path / "src"), str(tmp_path / "dd"))
  flat = {k: v[0] for k, v in _by_file_name(tmp_path / "dd", "validation").items()}
  prepare.prepare_imagenet(str(ilsvrc), str(tmp_path / "dd_flat"))
  assert flat == {k: v[0] for k, v in _by_file_name(tmp_path / "dd_flat", "validation").items()}


def test_image_folder_becomes_a_named_dataset_every_config_can_read(tmp_path):
  root = tmp_path / "images"
  for split, cls, shape in (("train", "cat", (8, 8, 3)), ("train", "dog", (8, 8, 4)), ("test", "dog", (9, 7, 3))):
    (root / split / cls).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(shape, 90, np.uint8)).save(root / split / cls / "x.png")
  prepare.prepare_folder("my_images", str(root), str(tmp_path / "dd"))
  train, info = data.open_source("my_images", "train", str(tmp_path / "dd"))
  assert (len(train), info.num_classes, info.channels) == (2, 2, 3)
  assert sorted((train[i]["label"], train[i]["image"].shape) for i in range(2)) == [(0, (8, 8, 3)), (1, (8, 8, 3))]
  test, _ = data.open_source("my_images", "test", str(tmp_path / "dd"))
  assert (test[0]["label"], test[0]["image"].shape) == (1, (9, 7, 3))  # labels shared across splits
  folder, _ = data.open_source(f"folder:{root}", "test")
  np.testing.assert_array_equal(folder[0]["image"], test[0]["image"])


def test_bad_preparations_are_one_line(tmp_path):
  for call, text in ((lambda: prepare.prepare_imagenet(str(tmp_path / "nope")), "is not a directory"),
                     (lambda: prepare.prepare_imagenet(str(tmp_path)), "holds neither ILSVRC2012_img_train.tar"),
                     (lambda: prepare.prepare_folder("mnist", str(tmp_path)), "is TFDS's own dataset"),
                     (lambda: prepare.prepare_folder("Bad Name", str(tmp_path)), "is invalid")):
    with pytest.raises(LmimError, match=text) as e:
      call()
    assert "\n" not in str(e.value)


def test_unprepared_datasets_say_how_to_prepare_them_here(tmp_path):
  with pytest.raises(DataNotPreparedError) as e:
    data.open_source("imagenet2012", "train", str(tmp_path))
  assert "prepare it with: lmim-prepare imagenet2012 --source" in str(e.value)
  assert f"--data_dir={tmp_path}" in str(e.value) and "tfds build" not in str(e.value)
  with pytest.raises(DataNotPreparedError) as e:
    data.open_source("cifar10", "train", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and f"tfds.builder('cifar10', data_dir='{tmp_path}', file_format='array_record')" in msg
  assert f"pip install {location.TF_VERSIONS}" in msg and "folder:<root>" in msg


def test_one_data_directory_for_every_dataset(monkeypatch, tmp_path):
  monkeypatch.setenv("LMIM_DATA_DIR", str(tmp_path / "lmim"))
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert location.data_dir() == str(tmp_path / "lmim") and location.data_dir("/x") == "/x"
  with pytest.raises(DataNotPreparedError, match=f"--data_dir={tmp_path / 'lmim'}"):
    data.open_source("imagenet2012", "train")
  monkeypatch.delenv("LMIM_DATA_DIR")
  assert location.data_dir() == str(tmp_path / "tfds")
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert location.data_dir() == os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


@pytest.mark.slow
def test_the_command_prepares_once_and_reports_errors_in_one_line(ilsvrc, tmp_path):
  cmd = [sys.executable, "-m", "lmim.data.prepare", "imagenet2012", "--source", str(ilsvrc), "--data_dir", str(tmp_path)]
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  first = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert first.returncode == 0 and first.stdout.strip().endswith("imagenet2012/5.1.0"), first.stderr[-2000:]
  again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
  assert again.returncode == 0 and "already prepared" in again.stderr
  bad = subprocess.run(cmd[:5] + [str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=300)
  assert bad.returncode == 2 and bad.stderr.strip().startswith("lmim: error: --source") and "Traceback" not in bad.stderr


def test_imagenet100_is_imagenet2012_restricted_to_cmcs_classes(tmp_path):
  """`classes='imagenet100'` on a prepared imagenet2012: only CMC's classes, relabelled 0..99 in
  sorted-wnid order, the same way in train and validation, without rebuilding the dataset."""
  cmc = sorted(data.sources.read_class_spec("imagenet100", "input.classes"))
  assert len(cmc) == 100 and cmc[:2] == ["n01558993", "n01692333"]
  root = tmp_path / "ilsvrc"
  rng = np.random.default_rng(1)
  counts = {"n01440764": 3, cmc[0]: 2, cmc[1]: 4}  # the first is not an ImageNet-100 class
  for wnid, n in counts.items():
    (root / "train" / wnid).mkdir(parents=True)
    (root / "val" / wnid).mkdir(parents=True)
    for i in range(n):
      for split in ("train", "val"):
        (root / split / wnid / f"{wnid}_{split}{i}.JPEG").write_bytes(
            _encoded(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), "JPEG"))
  prepare.prepare_imagenet(str(root), str(tmp_path / "dd"))
  full, full_info = data.open_source("imagenet2012", "train", str(tmp_path / "dd"))
  assert (len(full), full_info.num_classes) == (9, 1000)
  for split in ("train", "validation"):
    sub, info = data.open_source("imagenet2012", split, str(tmp_path / "dd"), classes="imagenet100")
    assert (len(sub), info.num_classes) == (6, 100)
    labels = sorted(sub[i]["label"] for i in range(len(sub)))
    assert labels == [0, 0, 1, 1, 1, 1] and list(sub.labels()) == [sub[i]["label"] for i in range(len(sub))]
