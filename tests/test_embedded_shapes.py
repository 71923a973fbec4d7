"""The second embedded dataset (shapes10k) and the raw-pixel baseline feature."""
import hashlib

import jax
import ml_collections as mlc
import numpy as np
import pytest

from lmim import data, evaluate, train
from lmim.data import shapes, transforms
from tiny import tiny_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shapes.ensure_prepared(str(tmp_path_factory.mktemp("tfds")))


def test_shapes_are_drawn_deterministically_balanced_and_in_range():
  rng_a, rng_b = np.random.default_rng(5), np.random.default_rng(5)
  a = [shapes.draw(i % 10, rng_a) for i in range(20)]
  b = [shapes.draw(i % 10, rng_b) for i in range(20)]
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert a[0].shape == (32, 32, 3) and a[0].dtype == np.uint8
  assert len({hashlib.sha1(x.tobytes()).hexdigest() for x in a}) == 20   # no two alike
  # Each class is its outline: the same class at another draw differs in pixels, not in kind.
  masks = [shapes._mask(k, np.random.default_rng(0)) for k in shapes.CLASSES]  # pylint: disable=protected-access
  assert all(0.02 < m.mean() < 0.6 for m in masks)


@pytest.mark.slow
def test_the_prepared_dataset_has_its_splits_and_pixels_are_near_chance(data_dir):
  train_src, info = data.open_source("shapes10k", "train", data_dir)
  test_src, tinfo = data.open_source("shapes10k", "test", data_dir)
  assert (info.num_examples, tinfo.num_examples, info.num_classes, info.channels) == (9000, 1000, 10, 3)
  assert np.bincount(test_src.labels()).tolist() == [100] * 10
  x = np.stack([test_src[i]["image"] for i in range(len(test_src))]).reshape(1000, -1).astype(np.float64)
  y = test_src.labels()
  f = x - x.mean(0)
  f /= np.linalg.norm(f, axis=1, keepdims=True)
  s = f @ f.T
  np.fill_diagonal(s, -np.inf)
  assert np.mean(y[s.argmax(1)] == y) < 0.25   # pixel 1-NN close to chance (0.10): the nuisances win


@pytest.mark.slow
def test_the_pixel_feature_is_the_centred_evaluation_image(tmp_path):
  wd = str(tmp_path / "wd")
  train.train(tiny_config(), wd, stop_after_steps=0)  # any checkpoint: pixels ignore the weights
  c = mlc.ConfigDict()
  c.mesh = dict(data=-1, fsdp=1)
  c.evals = {"nn": dict(type="nn_loo", data="mnist5k", split="test[:300]", batch_size=100, feature="pixels")}
  got = evaluate.evaluate(c, wd, devices=jax.devices()[:1])["metrics"]["nn/top1"]
  src, info = data.open_source("mnist5k", "test[:300]")
  x = np.stack([transforms.eval_transform(src[i]["image"], size=16, mean=info.mean, std=info.std).reshape(-1)
                for i in range(len(src))]).astype(np.float64)
  x -= x.mean(0)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  s = x @ x.T
  np.fill_diagonal(s, -np.inf)
  y = src.labels()
  assert got == pytest.approx(100 * np.mean(y[s.argmax(1)] == y), abs=1e-6)
