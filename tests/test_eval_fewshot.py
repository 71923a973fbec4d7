"""The `fewshot` evaluator (CoOp K-shot splits + CLIP-style logistic-regression probe): the sampler,
the C search on synthetic features whose answer is known, and the evaluator end to end on the
embedded data (1 vs 8 devices) and on mock TFDS data; bad input is a one-line error."""
import types

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

import lmim.evaluators
import lmim.sharding
from lmim import config_lib, methods
from lmim.errors import ConfigError, DataNotPreparedError
from lmim.evaluators import common, fewshot
from tiny import tiny_config

MNIST = dict(data="mnist5k", train="train[:400]", test="test[:200]")


def build(channels: int):
  cfg = config_lib.resolve(tiny_config("latent_mim"), 4000)
  method = methods.get("latent_mim").build(cfg, channels)
  params, ema = method.init(jax.random.key(0))
  return method, types.SimpleNamespace(params=params, ema_params=ema)


@pytest.fixture(scope="module")
def tiny():
  return build(1)        # mnist5k is grayscale


def context(method, name="fs", devices=None):
  mesh = lmim.sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), devices or jax.devices()[:1])
  return lmim.evaluators.Context(method=method, mesh=mesh, name=name)


# Sampler -------------------------------------------------------------------------------------------

def test_sampler_draws_exactly_k_per_class_deterministically_per_seed():
  rng = np.random.default_rng(0)
  labels = np.repeat(np.arange(6), [30, 20, 25, 40, 35, 22])[rng.permutation(172)]
  train_pool, val_pool = fewshot.carve_val(labels, 0.2)
  assert not set(train_pool) & set(val_pool) and len(train_pool) + len(val_pool) == len(labels)
  assert np.array_equal(np.bincount(labels[val_pool]), [6, 4, 5, 8, 7, 4])  # round(0.2·n) per class
  for k in (1, 2, 4, 8):
    t1, v1 = fewshot.draw(train_pool, labels[train_pool], val_pool, labels[val_pool], k, seed=1)
    t1b, v1b = fewshot.draw(train_pool, labels[train_pool], val_pool, labels[val_pool], k, seed=1)
    t2, v2 = fewshot.draw(train_pool, labels[train_pool], val_pool, labels[val_pool], k, seed=2)
    assert np.array_equal(t1, t1b) and np.array_equal(v1, v1b)
    assert not np.array_equal(t1, t2) and not np.array_equal(np.sort(v1), np.sort(v2))
    assert len(set(t1)) == len(t1) and set(t1) <= set(train_pool) and set(v1) <= set(val_pool)
    assert np.array_equal(np.bincount(labels[t1], minlength=6), [k] * 6)
    assert np.array_equal(np.bincount(labels[v1], minlength=6), [min(k, 4)] * 6)


# C search and the probe ----------------------------------------------------------------------------

def blobs(rng, per_class, num_classes=5, dim=16, spread=0.3):
  centres = 3.0 * np.eye(num_classes, dim)
  y = np.repeat(np.arange(num_classes), per_class)
  return (centres[y] + spread * rng.normal(size=(len(y), dim))).astype(np.float32), y


def test_c_search_separates_separable_features_and_not_shuffled_labels():
  rng = np.random.default_rng(0)
  train, val, test = blobs(rng, 4), blobs(rng, 4), blobs(rng, 100)
  acc, c = fewshot.search_c(train, val, test)
  assert acc == pytest.approx(100.0)
  # lpclip: the peak of the grid is the first with the best val accuracy (1e6 on separable data),
  # the bisection stays within [0.1·C*, 10·C*].
  assert 1e5 <= c <= 1e7
  acc0, c0 = fewshot.search_c(train, val, test, steps=0)
  assert (acc0, c0) == (100.0, 1e6)
  shuffled = (train[0], rng.permutation(train[1]))
  acc_shuffled, _ = fewshot.search_c(shuffled, val, test)
  assert acc_shuffled < 50.0, acc_shuffled          # chance is 20%


def test_c_search_bisection_follows_lpclip(monkeypatch):
  """Val accuracy peaked at C = 10^0.3: the grid picks 1, the bisection walks towards 10^0.3."""
  monkeypatch.setattr(fewshot, "_fit", lambda x, y, c, max_iter: c)
  monkeypatch.setattr(fewshot, "_acc", lambda c, x, y: -abs(np.log10(c) - 0.3))
  _, c = fewshot.search_c((0, 0), (0, 0), (0, 0))
  assert abs(np.log10(c) - 0.3) < 2 / 2 ** 7 and c != 1.0


# End to end -----------------------------------------------------------------------------------------

def test_fewshot_end_to_end_on_embedded_data_matches_across_devices(tiny, monkeypatch):
  method, state = tiny
  extracted = []
  extract = common.FeatureSpec.extract
  monkeypatch.setattr(common.FeatureSpec, "extract",
                      lambda self, st, source, info, **kw: extracted.append(len(source)) or extract(self, st, source, info, **kw))
  # A short C search keeps this test quick; the full one is tested above.
  fields = dict(datasets=(MNIST,), shots=(1, 2), seeds=(1, 2), batch_size=64, c_grid=(1e2, 1.0, 1e-2), search_steps=2)
  one = dict(fewshot.Evaluator(context(method), **fields).run(state))
  names = {f"mnist5k/k{k}_{s}" for k in (1, 2) for s in ("mean", "std", "log10C")} | {"mean_k1", "mean_k2"}
  assert set(one) == names
  assert all(np.isfinite(v) for v in one.values())
  assert all(0 <= one[f"mnist5k/k{k}_mean"] <= 100 and one[f"mnist5k/k{k}_std"] >= 0 for k in (1, 2))
  assert one["mean_k2"] == one["mnist5k/k2_mean"]
  # Only the drawn images are extracted: ≤ 2·(1+2)·10 train + ≤ 2·(1+2)·10 val (carved, same split) in
  # one pass, then the whole test split.
  assert extracted[1] == 200 and 20 <= extracted[0] <= 120 and len(extracted) == 2
  eight = dict(fewshot.Evaluator(context(method, devices=jax.devices()), **fields).run(state))
  assert set(eight) == names
  for k in names:
    assert eight[k] == pytest.approx(one[k], abs=1e-6), k


def test_results_are_mean_and_population_std_over_seeds(tiny, monkeypatch):
  method, state = tiny
  results = iter([(10.0, 1.0), (20.0, 100.0), (30.0, 1e-2), (50.0, 1e-2)])   # (k1,s1) (k1,s2) (k2,s1) (k2,s2)
  monkeypatch.setattr(fewshot, "search_c", lambda *a, **k: next(results))
  m = dict(fewshot.Evaluator(context(method), datasets=(MNIST,), shots=(1, 2), seeds=(1, 2), batch_size=64).run(state))
  assert (m["mnist5k/k1_mean"], m["mnist5k/k1_std"], m["mnist5k/k1_log10C"]) == (15.0, 5.0, 1.0)   # ddof 0
  assert (m["mnist5k/k2_mean"], m["mnist5k/k2_std"], m["mnist5k/k2_log10C"]) == (40.0, 10.0, -2.0)
  assert (m["mean_k1"], m["mean_k2"]) == (15.0, 40.0)


def test_fewshot_on_mock_tfds_data():
  method, state = build(3)
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    ev = fewshot.Evaluator(context(method), datasets=("dtd", dict(name="pets", data="oxford_iiit_pet")),
                           shots=(1,), seeds=(1, 2), batch_size=8, c_grid=(1.0, 1e-2), search_steps=1)
    m = dict(ev.run(state))
  assert set(m) == {f"{d}/k1_{s}" for d in ("dtd", "pets") for s in ("mean", "std", "log10C")} | {"mean_k1"}
  assert all(np.isfinite(v) for v in m.values())
  assert m["mean_k1"] == pytest.approx((m["dtd/k1_mean"] + m["pets/k1_mean"]) / 2)
  # dtd has a validation split (read), the pets' val is carved from train.
  assert [(d, s) for d, s, _ in fewshot.datasets(dict(datasets=("dtd", "oxford_iiit_pet")))] == [
      ("dtd", "train"), ("dtd", "validation"), ("dtd", "test"), ("oxford_iiit_pet", "train"),
      ("oxford_iiit_pet", "test")]


# Bad input ------------------------------------------------------------------------------------------

def test_k_larger_than_the_smallest_class_is_a_one_line_error_before_extraction(tiny, monkeypatch):
  method, _ = tiny
  monkeypatch.setattr(common.FeatureSpec, "extract", lambda *a, **k: pytest.fail("extracted"))
  with pytest.raises(ConfigError) as err:
    fewshot.Evaluator(context(method), datasets=(dict(data="mnist5k", train="train[:60]"),), shots=(1, 16))
  msg = str(err.value)
  assert msg.startswith("config.evals.fs.shots=") and "\n" not in msg
  assert "smallest class" in msg and "mnist5k" in msg


BAD = [
    (dict(shots=(0, 1)), ConfigError, "config.evals.fs.shots="),
    (dict(shots=()), ConfigError, "config.evals.fs.shots="),
    (dict(shots=(1.5,)), ConfigError, "config.evals.fs.shots="),
    (dict(seeds=()), ConfigError, "config.evals.fs.seeds="),
    (dict(datasets=("no_such_dataset_xyz",)), ConfigError, "config.evals.fs.datasets[0].data="),
    (dict(datasets=(dict(data="mnist5k", splits="x"),)), ConfigError, "config.evals.fs.datasets[0].splits="),
    (dict(feature="patch_tokens"), ConfigError, "config.evals.fs.feature="),
    (dict(datasets=("dtd",)), DataNotPreparedError, "tfds.builder('dtd'"),
    (dict(datasets=("ucf101",)), DataNotPreparedError, "middle frame"),
]


@pytest.mark.parametrize("fields,error,text", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_input_is_one_line(tiny, tmp_path, fields, error, text):
  fields = dict(dict(datasets=(MNIST,), data_dir=str(tmp_path)), **fields)
  with pytest.raises(error) as err:
    fewshot.Evaluator(context(tiny[0]), **fields)
  assert text in str(err.value) and "\n" not in str(err.value)


def test_unknown_field_is_rejected_and_the_preset_resolves():
  with pytest.raises(ConfigError, match="evals.fs.shot"):
    lmim.evaluators.from_config("fs", ml_collections.ConfigDict(dict(type="fewshot", shot=3)), method=None, mesh=None)
  rows = fewshot.datasets(dict(data_dir="/data"))
  assert [r[0] for r in rows].count("sun397") == 3 and ("folder:/data/ucf101_midframes", "test", "/data") in rows
