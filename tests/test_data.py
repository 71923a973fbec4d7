"""Data: the embedded dataset, sources, transforms and the global-example-index pipelines."""
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lmim import data
from lmim.data import transforms
from lmim.errors import ConfigError, DataNotPreparedError


@pytest.fixture(scope="module")
def mnist():
  return data.open_source("mnist5k", "train")


def test_embedded_dataset_has_the_promised_splits():
  train, info = data.open_source("mnist5k", "train")
  test, tinfo = data.open_source("mnist5k", "test")
  assert (info.num_examples, tinfo.num_examples, info.num_classes, info.channels) == (4000, 1000, 10, 1)
  assert info.mean == (0.1307,) and info.std == (0.3081,)  # MNIST statistics, never ImageNet's
  for src, per_class in ((train, 400), (test, 100)):
    labels = np.array([src[i]["label"] for i in range(len(src))])
    assert np.bincount(labels).tolist() == [per_class] * 10
  ex = train[0]
  assert ex["image"].shape == (28, 28, 1) and ex["image"].dtype == np.uint8 and ex["image"].max() > 0
  assert data.ensure_prepared() == data.ensure_prepared()  # a second call is a no-op


def test_split_slicing(mnist):
  src, info = data.open_source("mnist5k", "test[:10%]")
  assert info.num_examples == 100
  src, info = data.open_source("mnist5k", "test[990:]")
  assert info.num_examples == 10


def batches(src, info, n, **kw):
  it = data.train_batches(src, info, image_size=20, num_threads=2, **kw)
  return [next(it) for _ in range(n)]


def test_stream_is_deterministic_for_a_seed_and_differs_across_seeds(mnist):
  a = batches(*mnist, 2, global_batch=8, seed=1)
  b = batches(*mnist, 2, global_batch=8, seed=1)
  c = batches(*mnist, 2, global_batch=8, seed=2)
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x["image"], y["image"])
  assert not np.array_equal(a[0]["image"], c[0]["image"])
  np.testing.assert_array_equal(a[1]["index"], np.arange(8, 16)[None])


def test_process_shards_concatenate_to_the_single_process_batch(mnist):
  whole = batches(*mnist, 2, global_batch=8, accum_steps=2, seed=0)
  parts = [batches(*mnist, 2, global_batch=8, accum_steps=2, seed=0, process_index=p, process_count=2)
           for p in range(2)]
  for step in range(2):
    joined = np.concatenate([parts[p][step]["image"] for p in range(2)], axis=1)  # rows in process order
    np.testing.assert_array_equal(joined, whole[step]["image"])


def test_resume_at_a_step_equals_skipping_batches(mnist):
  run = batches(*mnist, 3, global_batch=8, seed=0)
  resumed = batches(*mnist, 1, global_batch=8, seed=0, start_step=2)
  np.testing.assert_array_equal(resumed[0]["image"], run[2]["image"])
  np.testing.assert_array_equal(resumed[0]["index"], run[2]["index"])


def test_accumulation_split_holds_the_same_examples(mnist):
  one = batches(*mnist, 1, global_batch=8, accum_steps=1, seed=0)[0]
  two = batches(*mnist, 1, global_batch=8, accum_steps=2, seed=0)[0]
  assert two["image"].shape == (2, 4, 20, 20, 1)
  np.testing.assert_array_equal(two["image"].reshape(one["image"].shape), one["image"])


def test_epochs_reshuffle():
  src, info = data.open_source("mnist5k", "test[:16]")
  it = data.train_batches(src, info, image_size=20, global_batch=16, seed=0, num_threads=1)
  e0, e1 = next(it), next(it)
  labels = lambda b: sorted(src[i]["label"] for i in range(16))
  assert labels(e0) == labels(e1)  # each epoch sees every example once
  assert not np.array_equal(e0["image"], e1["image"])


def test_bad_batch_split_is_a_config_error(mnist):
  with pytest.raises(ConfigError, match="batch_size"):
    data.train_batches(*mnist, image_size=20, global_batch=10, accum_steps=4)


def test_random_resized_crop_respects_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = transforms.random_resized_crop_params(100, 80, rng, scale=(0.2, 1.0))
    assert 0 <= top and top + h <= 100 and 0 <= left and left + w <= 80
    if (h, w) != (100, 80):
      assert 0.2 * 8000 * 0.9 <= h * w <= 8000
  out = transforms.random_resized_crop(np.zeros((100, 80, 3), np.uint8), 35, rng)
  assert out.shape == (35, 35, 3) and out.dtype == np.uint8


def test_flip_and_eval_crop():
  img = np.arange(12, dtype=np.uint8).reshape(2, 6, 1)
  flips = {transforms.horizontal_flip(img, np.random.default_rng(s))[0, 0, 0] for s in range(20)}
  assert flips == {0, 5}
  out = transforms.eval_transform(np.full((40, 60, 3), 128, np.uint8), size=24, mean=(0.5,) * 3, std=(0.5,) * 3)
  assert out.shape == (24, 24, 3) and np.allclose(out, 128 / 255 * 2 - 1, atol=1e-2)


def test_eval_stream_pads_and_masks():
  """37 examples, 2 processes, batch 8: each process runs 5 batches of 4 (20 rows); process 1
  holds examples 20..36 and 3 padded rows; together every example exactly once."""
  src, info = data.open_source("mnist5k", "test[:37]")
  seen = []
  for p, valid in ((0, 20), (1, 17)):
    bs = list(data.eval_batches(src, info, image_size=28, batch_size=8, process_index=p, process_count=2))
    assert len(bs) == data.num_eval_batches(37, 8, 2) == 5
    assert all(b["image"].shape == (4, 28, 28, 1) for b in bs)
    mask = np.concatenate([b["mask"] for b in bs])
    assert mask.sum() == valid and (np.concatenate([b["label"] for b in bs])[~mask] == -1).all()
    seen += np.concatenate([b["index"] for b in bs])[mask].tolist()
  assert sorted(seen) == list(range(37))


def test_unprepared_tfds_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(DataNotPreparedError) as e:
    data.open_source("imagenet2012", "train", str(tmp_path))
  msg = str(e.value)
  assert "\n" not in msg and "tfds build imagenet2012 --file_format=array_record" in msg


def test_unknown_dataset_and_bad_statistics_are_config_errors(tmp_path):
  with pytest.raises(ConfigError, match="input.data"):
    data.open_source("no_such_dataset_xyz", "train", str(tmp_path))
  with pytest.raises(ConfigError, match="input.mean"):
    data.open_source("mnist5k", "test", mean=(0.5, 0.5, 0.5), std=(0.2, 0.2, 0.2))


def test_registered_tfds_dataset_through_mock_data():
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    src, info = data.open_source("mnist", "train")
    assert info.num_examples == 12 and info.channels == 1 and info.num_classes == 10
    b = next(data.train_batches(src, info, image_size=20, global_batch=4, num_threads=1))
    assert b["image"].shape == (1, 4, 20, 20, 1)


def test_image_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  for cls in ("cat", "dog"):
    (tmp_path / "train" / cls).mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "train" / cls / f"{i}.png")
  src, info = data.open_source(f"folder:{tmp_path}", "train")
  assert (info.num_examples, info.num_classes, info.channels) == (6, 2, 3)
  assert [src[i]["label"] for i in range(6)] == [0, 0, 0, 1, 1, 1]
  assert info.mean == (0.485, 0.456, 0.406)  # RGB without known statistics: ImageNet's
  b = next(data.train_batches(src, info, image_size=16, global_batch=2, num_threads=1))
  assert b["image"].shape == (1, 2, 16, 16, 3)
  with pytest.raises(DataNotPreparedError, match="no split 'val'"):
    data.open_source(f"folder:{tmp_path}", "val")
