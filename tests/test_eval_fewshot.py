"""The `fewshot` evaluator (CoOp K-shot splits + CLIP-style logistic-regression probe): the sampler,
the C search on synthetic features whose answer is known, and the evaluator end to end on the
embedded data (1 vs 8 devices) and on mock TFDS data; bad input is a one-line error."""
import os
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
  method = methods.build(cfg, channels)
  params, ema = method.init(jax.random.key(0))
  return method, types.SimpleNamespace(params=params, ema_params=ema)


@pytest.fixture(scope="module")
def tiny():
  return build(1)        # mnist5k is grayscale


def context(method, name="fs", devices=None):
  mesh = lmim.sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), devices or jax.devices()[:1])
  return lmim.evaluators.context(method, mesh, name)


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

@pytest.mark.slow
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
    dtd = dict(name="dtd", pool=None, val="validation")  # 24 mock images cannot be carved 50/20/30 per class
    ev = fewshot.Evaluator(context(method), datasets=(dtd, dict(name="pets", data="oxford_iiit_pet")),
                           shots=(1,), seeds=(1, 2), batch_size=8, c_grid=(1.0, 1e-2), search_steps=1)
    m = dict(ev.run(state))
  assert set(m) == {f"{d}/k1_{s}" for d in ("dtd", "pets") for s in ("mean", "std", "log10C")} | {"mean_k1"}
  assert m["mean_k1"] == pytest.approx((m["dtd/k1_mean"] + m["pets/k1_mean"]) / 2)
  # dtd's preset carves CoOp's 50/20/30 from every split; the pets' val is carved from train.
  assert [(d, s) for d, s, _ in fewshot.datasets(dict(datasets=("dtd", "oxford_iiit_pet", dict(dtd, name="d2", data="dtd"))))] == [
      ("dtd", "train+validation+test"), ("oxford_iiit_pet", "train"), ("oxford_iiit_pet", "test"),
      ("dtd", "train"), ("dtd", "validation"), ("dtd", "test")]


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
  assert [r[:2] for r in rows if r[0].startswith("sun397")] == [("sun397/standard-part1-120k", "train"),
                                                                  ("sun397/standard-part1-120k", "test")]
  assert ("folder:/data/ucf101_midframes", "test", "/data") in rows


# CoOp's splits -----------------------------------------------------------------------------------

def test_coop_split_is_50_20_30_per_class_and_leaves_out_ignored_classes():
  rng = np.random.default_rng(0)
  sizes = [10, 31, 40, 7]
  labels = np.repeat(np.arange(4), sizes)[rng.permutation(sum(sizes))]
  tr, va, te = fewshot.coop_split(labels, keep={0, 1, 2})
  assert not (set(tr) & set(va)) and not (set(tr) & set(te)) and not (set(va) & set(te))
  for c, n in enumerate(sizes[:3]):
    assert (np.sum(labels[tr] == c), np.sum(labels[va] == c), np.sum(labels[te] == c)) == \
        (round(0.5 * n), round(0.2 * n), n - round(0.5 * n) - round(0.2 * n))   # 10 -> 5/2/3, 31 -> 16/6/9
  assert 3 not in labels[np.concatenate([tr, va, te])]
  again = fewshot.coop_split(labels, keep={0, 1, 2})
  assert all(np.array_equal(a, b) for a, b in zip(again, (tr, va, te)))
  with pytest.raises(ValueError, match="class 0 has 2 images"):
    fewshot.coop_split(np.array([0, 0, 1, 1, 1, 1, 1]))


# Smallest class of each dataset's images as CoOp splits them (TFDS catalog / dataset papers): the
# pools the presets carve must leave every class at least K = 16 train images.
SMALLEST_CLASS = {
    "caltech101": ("pool", 31),          # 101 categories, 31..800 images each (the dropped two aside)
    "dtd": ("pool", 120),                # 47 x 120
    "oxford_flowers102": ("pool", 40),   # 40..258 per class; TFDS train alone: 10 per class
    "oxford_iiit_pet": ("train", 93),    # trainval: ~100 per breed (93 the fewest)
    "cars196": ("train", 24),            # 8,144 train images over 196 classes, 24 the fewest
    "sun397": ("train", 50),             # Training_01: 50 per class
    "ucf101": ("train", 70),             # trainlist01: ~70..120 clips per action
}


@pytest.mark.parametrize("name", sorted(SMALLEST_CLASS))
def test_every_preset_leaves_16_train_images_in_its_smallest_class(name):
  spec = fewshot.resolve_datasets((name,), "/data")[0]
  where, n = SMALLEST_CLASS[name]
  assert (spec.pool is not None) == (where == "pool"), spec
  if where == "pool":
    tr, _, _ = fewshot.coop_split(np.zeros(n, np.int64))
  else:
    tr, _ = fewshot.carve_val(np.zeros(n, np.int64), 0.2)
  assert len(tr) >= 16
  assert fewshot.resolve_datasets(("caltech101",))[0].ignore == ("background_google", "faces_easy")


def test_split_file_paths_match_tfds_records_by_file_name_and_class_folder():
  names = ["image_0001.jpg", "image_0002.jpg", "image_0001.jpg", "banded_0002.jpg"]
  classes = np.array([0, 0, 1, 2])
  class_names = ("accordion", "airplanes", "banded")
  rows = fewshot.match_files(["airplanes/image_0001.jpg", "accordion/image_0001.jpg", "accordion/image_0002.jpg",
                              "banded/banded_0002.jpg"], names, classes, class_names)
  assert rows.tolist() == [2, 0, 1, 3]
  with pytest.raises(ValueError, match="no record"):
    fewshot.match_files(["x/image_0099.jpg"], names, classes, class_names)


def test_split_file_on_an_image_folder_uses_its_images_and_labels(tmp_path):
  """A CoOp split file over an image folder: the file's train/val/test images and labels, the
  split recorded in `notes`; colour-coded classes are separable even for an untrained encoder."""
  import json  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  method, state = build(3)
  rng = np.random.default_rng(0)
  colours = [(230, 30, 30), (30, 230, 30), (30, 30, 230)]
  table = {"train": [], "val": [], "test": []}
  for c, colour in enumerate(colours):
    os.makedirs(tmp_path / "images" / f"class{c}")
    for j in range(10):
      path = f"class{c}/img_{j}.png"
      img = np.clip(np.array(colour) + rng.normal(0, 20, (32, 40, 3)), 0, 255).astype(np.uint8)
      Image.fromarray(img).save(tmp_path / "images" / path)
      split = "train" if j < 5 else "val" if j < 7 else "test"
      table[split].append([path, c, f"class {c}"])
  (tmp_path / "split_zhou_Toy.json").write_text(json.dumps(table))
  extracted = []
  extract = common.FeatureSpec.extract
  spec = dict(name="toy", data=f"folder:{tmp_path / 'images'}", split_file=str(tmp_path / "split_zhou_Toy.json"))
  ev = fewshot.Evaluator(context(method), datasets=(spec,), shots=(1, 2), seeds=(1, 2), batch_size=8,
                         c_grid=(1.0, 1e2), search_steps=1)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(common.FeatureSpec, "extract",
               lambda self, st, source, info, **kw: extracted.append(len(source)) or extract(self, st, source, info, **kw))
    m = dict(ev.run(state))
  assert extracted[-1] == 9                                  # the file's 3 x 3 test images
  assert m["toy/k2_mean"] > 80.0                             # chance 33
  assert "split file" in ev.notes["toy"]
  bad = dict(spec, split_file=str(tmp_path / "nope.json"))
  with pytest.raises(ConfigError, match="split_file"):
    fewshot.Evaluator(context(method), datasets=(bad,))


def test_the_test_view_is_coops_shorter_side_then_centre_crop():
  import inspect  # pylint: disable=import-outside-toplevel
  from lmim.data import transforms  # pylint: disable=import-outside-toplevel
  assert inspect.signature(fewshot.Evaluator.__init__).parameters["resize"].default == "shorter_side"
  img = np.zeros((40, 60, 3), np.uint8)
  img[:, 10:50] = 255                                         # a bright band 40 px wide in a 60-px row
  out = transforms.EVAL_RESIZES["shorter_side"](img, 20)     # 40x60 -> 20x30 -> central 20x20
  assert out.shape == (20, 20, 3) and out.min() > 200        # the crop lies inside the band
  assert transforms.EVAL_RESIZES["center_crop"](img, 20).shape == (20, 20, 3)
