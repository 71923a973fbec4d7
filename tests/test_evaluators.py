"""Probing: NN / kNN / linear probe / fine-tuning, the evaluation runner, presets and bad input."""
import json
import logging
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import pytest
import tensorflow_datasets as tfds

import lmim.data
import lmim.evaluators
import lmim.sharding
from configs import eval as eval_presets
from conftest import ROOT
from fixtures_lib import fixture_dirs, load
from lmim import convert, evaluate, train
from lmim.data import augment
from lmim.errors import CheckpointError, ConfigError, DataNotPreparedError
from lmim.evaluators import finetune, knn, linear_probe, nn_loo
from tiny import tiny_config


def clusters(n_per=40, classes=5, dim=16, seed=0, spread=0.05):
  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((classes, dim))
  x = np.concatenate([c + spread * rng.standard_normal((n_per, dim)) for c in centres]).astype(np.float32)
  return x, np.repeat(np.arange(classes), n_per)


def test_nn_and_knn_separate_clusters_and_fail_on_shuffled_labels():
  x, y = clusters()
  assert nn_loo.loo_1nn_accuracy(x, y) == 100.0
  shuffled = np.random.default_rng(1).permutation(y)
  assert nn_loo.loo_1nn_accuracy(x, shuffled) < 45.0
  q, qy = clusters(n_per=10, seed=0)
  preds = knn.knn_predict(q, x, y, 5, (1, 20), 0.07)
  assert (preds[20] == qy).mean() == 1.0 and (preds[1] == qy).mean() == 1.0
  preds = knn.knn_predict(q, x, shuffled, 5, (20,), 0.07)
  assert (preds[20] == qy).mean() < 0.5


def test_knn_chunking_does_not_change_neighbours():
  rng = np.random.default_rng(0)
  bank, q = rng.standard_normal((103, 8)).astype(np.float32), rng.standard_normal((9, 8)).astype(np.float32)
  valid = jnp.ones(104, bool).at[103].set(False)
  padded = jnp.concatenate([jnp.asarray(bank), jnp.zeros((1, 8))])
  s_small, i_small = knn.topk_neighbours(jnp.asarray(q), padded, valid, 5, 8)
  s_one, i_one = knn.topk_neighbours(jnp.asarray(q), padded, valid, 5, 104)
  np.testing.assert_array_equal(i_small, i_one)
  sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (bank / np.linalg.norm(bank, axis=1, keepdims=True)).T
  np.testing.assert_array_equal(np.asarray(i_one), np.argsort(-sims, axis=1)[:, :5])


def test_knn_vote_is_temperature_weighted_not_a_majority():
  """Query along e0; 2 bank rows of class 0 almost parallel to it, 3 of class 1 further away: a
  plain majority of the top 5 says 1, DINO's exp(cos/0.07) weights say 0 (and T → ∞ says 1)."""
  angles = np.array([0.05, 0.06, 0.5, 0.55, 0.6])
  bank = np.stack([np.cos(angles), np.sin(angles)], 1).astype(np.float32)
  labels = np.array([0, 0, 1, 1, 1])
  q = np.array([[1.0, 0.0]], np.float32)
  assert knn.knn_predict(q, bank, labels, 2, (5,), 0.07)[5][0] == 0
  assert knn.knn_predict(q, bank, labels, 2, (5,), 1e6)[5][0] == 1


def sharded_bank(x, y, mesh, batch=24):
  """A ShardedBank of host features through the real builder (identity 'encoder')."""
  def batches():
    for start in range(0, len(x), batch):
      n = min(batch, len(x) - start)
      pad = batch - n
      yield {"image": np.concatenate([x[start:start + n], np.zeros((pad, x.shape[1]), x.dtype)]),
             "label": np.concatenate([y[start:start + n], -np.ones(pad, y.dtype)]).astype(np.int32),
             "mask": np.arange(batch) < n}
  return knn.ShardedBank.build(lambda p, f: f, None, batches(), -(-len(x) // batch), mesh)


def test_sharded_bank_search_equals_the_one_device_search():
  """Bank rows spread over 8 devices (each holds 1/8), every device's top-k merged: the same
  neighbours and votes as the whole bank scanned on one device; padding rows never win."""
  from lmim import sharding  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  x, y = clusters(n_per=41, classes=5, dim=16, spread=0.8)   # 205 rows: the last batch is padded
  q, qy = clusters(n_per=7, classes=5, dim=16, seed=0, spread=0.8)
  q = q + 0.3 * rng.standard_normal(q.shape).astype(np.float32)
  mesh = sharding.make_mesh(mlc.ConfigDict(dict(data=-1, fsdp=1)), jax.devices())
  bank = sharded_bank(x, y, mesh)
  assert len(bank) == 205 and bank.feats.shape == (9, 24, 16)
  assert bank.bytes_per_device() == 9 * 24 * 16 * 4 // 8
  ref = knn.knn_predict(q, x, y, 5, (1, 10, 20), 0.07)
  got = knn.knn_predict_sharded(q, bank, 5, (1, 10, 20), 0.07, mesh, query_chunk=16)
  for k in (1, 10, 20):
    np.testing.assert_array_equal(got[k], ref[k])
  fn = knn._sharded_topk_fn(mesh, 20)  # pylint: disable=protected-access
  valid = jax.device_put(bank.valid.reshape(bank.feats.shape[:2]), bank.feats.sharding)
  s, i = fn(jnp.asarray(q), bank.feats, valid)
  rows = np.flatnonzero(bank.valid)
  flat = np.asarray(jax.device_get(bank.feats)).reshape(-1, 16)
  assert set(np.asarray(i).ravel()) <= set(rows)
  np.testing.assert_array_equal(bank.labels[np.asarray(i)], y[knn.topk_neighbours(
      jnp.asarray(q), jnp.asarray(x), jnp.ones(len(x), bool), 20, len(x))[1]])
  np.testing.assert_allclose(flat[rows], x, atol=0)   # the bank holds exactly the features


def test_linear_probe_head_learns_separable_features_with_lars():
  x, y = clusters(n_per=64, classes=4, dim=8)
  state = linear_probe.init_heads(jax.random.key(0), 2, 8, 4)
  lrs = jnp.asarray([0.01, 64.0])  # LARS moves the weight by ≈ lr·0.001 of its norm per step
  for step in range(100):
    idx = np.random.default_rng(step).permutation(len(x))[:64]
    state = linear_probe.train_step(state, jnp.asarray(x[idx]), jnp.asarray(y[idx]), lrs,
                                    eps=1e-6, momentum=0.9, trust=0.001, wd=0.0)
  preds = np.asarray(linear_probe.predict(state, jnp.asarray(x), eps=1e-6))
  assert (preds[1] == y).mean() > 0.95          # one head per lr, trained in the same pass
  assert not np.array_equal(np.asarray(state["w"][0]), np.asarray(state["w"][1]))
  # running BatchNorm statistics (momentum 0.1, unbiased variance) converged to the features'
  np.testing.assert_allclose(np.asarray(state["mean"]), x.mean(0), atol=0.15)  # batch-mean noise
  np.testing.assert_allclose(np.asarray(state["var"]), x.var(0), rtol=0.25)


def test_linear_probe_batchnorm_and_lars_change_where_the_head_lands():
  """Features on wildly different scales (one informative dimension at 1e-3, noise at 1e3): with
  BatchNorm + LARS the head finds the informative dimension; a plain SGD head on raw features at
  the same lr does not. BN over groups (MAE's per-GPU 512) normalises each group by its own
  statistics and keeps the first group's as running statistics."""
  rng = np.random.default_rng(0)
  n = 512
  y = rng.integers(0, 2, n)
  x = np.concatenate([1e-3 * (2 * y[:, None] - 1) + 1e-4 * rng.standard_normal((n, 1)),
                      1e3 * rng.standard_normal((n, 7))], 1).astype(np.float32)
  lrs = jnp.asarray([64.0], jnp.float32)  # LARS moves the weight by ≈ lr·0.001 of its norm per step
  state = linear_probe.init_heads(jax.random.key(0), 1, 8, 2)
  for step in range(150):
    idx = np.random.default_rng(step).permutation(n)[:128]
    state = linear_probe.train_step(state, jnp.asarray(x[idx]), jnp.asarray(y[idx]), lrs,
                                    eps=1e-6, momentum=0.9, trust=0.001, wd=0.0)
  assert (np.asarray(linear_probe.predict(state, jnp.asarray(x), eps=1e-6))[0] == y).mean() > 0.95
  w = np.zeros((8, 2), np.float32)        # plain SGD, no BatchNorm, same lr: noise dimensions dominate
  for step in range(150):
    idx = np.random.default_rng(step).permutation(n)[:128]
    p = jax.nn.softmax(x[idx] @ w)
    w -= 64.0 * x[idx].T @ (np.asarray(p) - np.eye(2)[y[idx]]) / 128
    w = np.clip(w, -1e6, 1e6)
  assert ((x @ w).argmax(1) == y).mean() < 0.8
  xb = jnp.asarray(np.concatenate([np.zeros((4, 3)), np.full((4, 3), 10.0)]).astype(np.float32)
                   + np.tile(np.arange(4, dtype=np.float32)[:, None], (2, 3)))
  whole, mu, var, g = linear_probe.batch_norm_groups(xb, 1e-6, None)
  grouped, mu4, var4, g4 = linear_probe.batch_norm_groups(xb, 1e-6, 4)
  assert g == 8 and g4 == 4 and float(mu4[0]) == 1.5 and float(mu[0]) == 6.5
  np.testing.assert_allclose(np.asarray(grouped[:4]), np.asarray(grouped[4:]), atol=1e-5)  # each group alike
  assert not np.allclose(np.asarray(whole[:4]), np.asarray(whole[4:]))


def test_tf_style_crop_is_maes_single_clipped_proposal():
  from lmim.data import transforms  # pylint: disable=import-outside-toplevel
  sizes = [transforms.tf_random_resized_crop_params(10, 400, np.random.default_rng(s)) for s in range(200)]
  assert all(0 <= t and t + h <= 10 and 0 <= l and l + w <= 400 for t, l, h, w in sizes)
  assert any(h == 10 for _, _, h, _ in sizes)            # clipped to the image, not retried
  tv = [transforms.random_resized_crop_params(10, 400, np.random.default_rng(s), (0.08, 1.0)) for s in range(200)]
  assert sizes != tv


def test_a_best_learning_rate_at_the_edge_of_the_grid_is_flagged():
  assert linear_probe.edge_of_grid((0.1, 1.0, 10.0), 2) == "largest"
  assert linear_probe.edge_of_grid((10.0, 1.0, 0.1), 2) == "smallest"  # grids need not be sorted
  assert linear_probe.edge_of_grid((0.1, 1.0, 10.0), 1) is None
  assert linear_probe.edge_of_grid((0.1,), 0) is None  # one rate is no sweep


def test_finetune_pieces():
  params = {"encoder": {"embed": {"proj": {"kernel": 0}}, "cls_token": 0, "blocks_0": {"x": 0},
                        "blocks_1": {"x": 0}, "norm": {"scale": 0}}, "head": {"head": {"kernel": 0}}}
  s = finetune.lr_scales(params, depth=2, decay=0.5)
  assert s["encoder"]["embed"]["proj"]["kernel"] == 0.125 and s["encoder"]["blocks_0"]["x"] == 0.25
  assert s["encoder"]["blocks_1"]["x"] == 0.5 and s["head"]["head"]["kernel"] == 1.0
  assert not finetune.decays("encoder/cls_token", 3) and finetune.decays("encoder/blocks_0/mlp/fc1/kernel", 2)
  imgs = jax.random.normal(jax.random.key(0), (4, 8, 8, 1))
  labels = jnp.arange(4)
  for key in range(5):
    x, t = finetune.mix(jax.random.key(key), imgs, labels, 10, mixup=0.8, cutmix=1.0, switch=0.5, smoothing=0.1)
    np.testing.assert_allclose(np.asarray(t.sum(-1)), 1.0, rtol=1e-5)
    assert x.shape == imgs.shape and float(t.max()) <= 0.91 + 1e-6
  x, t = finetune.mix(jax.random.key(0), imgs, labels, 10, mixup=0, cutmix=0, switch=0.5, smoothing=0.1)
  np.testing.assert_array_equal(x, imgs)


def test_rand_augment_and_erasing_are_seeded_and_shape_preserving():
  img = (np.arange(32 * 32 * 3) % 251).astype(np.uint8).reshape(32, 32, 3)
  ra = augment.parse_rand_augment("rand-m9-mstd0.5-inc1")
  assert ra == dict(magnitude=9.0, magnitude_std=0.5, num_layers=2, increasing=True)
  outs = [augment.rand_augment(img, np.random.default_rng(s), **ra) for s in (0, 0, 1, 2, 3)]
  assert all(o.shape == img.shape and o.dtype == np.uint8 for o in outs)
  np.testing.assert_array_equal(outs[0], outs[1])
  assert any(not np.array_equal(outs[0], o) for o in outs[2:])
  x = np.zeros((32, 32, 3), np.float32)
  erased = [augment.random_erasing(x, np.random.default_rng(s), 1.0) for s in range(5)]
  for e in erased:
    frac = (e != 0).any(-1).mean()
    assert 0.01 < frac < 0.4
  with pytest.raises(ValueError, match="unknown RandAugment option"):
    augment.parse_rand_augment("rand-m9-zz3")


# End to end on checkpoints ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A briefly pretrained tiny Latent MIM on the embedded data, and the same model untrained."""
  root = tmp_path_factory.mktemp("eval")
  cfg = lambda steps: tiny_config(**{
      "model.width": 64, "model.num_heads": 4, "model.depth": 2, "model.grid_size": 7,
      "model.projector.dim": 128, "model.decoder.width": 32, "views.num_vis": 10, "batch_size": 64,
      "sim_reg.group_size": 32, "optim.blr": 5e-3, "total_steps": steps, "warmup_steps": 10,
      "checkpoint.every_steps": steps, "mesh.data": 1})
  train.train(cfg(600), str(root / "trained"), devices=jax.devices()[:1])
  train.train(cfg(600), str(root / "init"), devices=jax.devices()[:1], stop_after_steps=0)
  return root


def demo_evals(split="test[:300]", train_split="train[:1500]"):
  m = dict(data="mnist5k", encoder="online", feature="cls")
  return {"nn": dict(type="nn_loo", split=split, batch_size=100, **m),
          "knn": dict(type="knn", split=split, train_split=train_split, k=(20,), batch_size=100, **m),
          "linear": dict(type="linear_probe", split=split, train_split=train_split, epochs=50, warmup_epochs=5,
                         batch_size=256, blrs=(10.0, 100.0), **m)}


def eval_config(evals, data=-1):
  c = mlc.ConfigDict()
  c.mesh = dict(data=data, fsdp=1)
  c.evals = evals
  return c


@pytest.mark.slow
def test_pretraining_beats_initialisation_on_every_probe(trained):
  done = evaluate.evaluate(eval_config(demo_evals()), str(trained / "trained"))["metrics"]
  init = evaluate.evaluate(eval_config(demo_evals()), str(trained / "init"))["metrics"]
  assert done["linear/top1"] > init["linear/top1"] + 5, (done, init)
  assert done["nn/top1"] > init["nn/top1"] and done["knn/top1_k20"] > init["knn/top1_k20"]


@pytest.mark.slow
def test_linear_probe_chooses_its_rate_on_held_out_train_images_and_encodes_in_micro_batches(trained, monkeypatch):
  """Several blrs: the choice comes from a held-out part of train (never the evaluation split),
  every head is reported on both; augment=True reads the stream `encode_batch_size` images at a
  time and still trains on whole batches."""
  seen = []
  real = lmim.data.train_batches
  monkeypatch.setattr(lmim.data, "train_batches", lambda *a, **k: seen.append(k["global_batch"]) or real(*a, **k))
  m = dict(data="mnist5k", encoder="online", feature="cls")
  evals = {"lp": dict(type="linear_probe", split="test[:200]", train_split="train[:400]", epochs=2, warmup_epochs=1,
                      batch_size=128, blrs=(1e-4, 10.0), holdout=0.25, augment=True, encode_batch_size=32,
                      crop_style="tf", bn_batch=64, **m)}
  got = evaluate.evaluate(eval_config(evals), str(trained / "trained"))["metrics"]
  assert seen == [32]
  held = [got["lp/holdout_top1_blr0.0001"], got["lp/holdout_top1_blr10"]]
  best = int(np.argmax(held))
  assert got["lp/best_blr"] == (1e-4, 10.0)[best]
  assert got["lp/top1"] == (got["lp/top1_blr0.0001"], got["lp/top1_blr10"])[best]
  with pytest.raises(ConfigError, match="holdout"):
    evaluate.evaluate(eval_config({"lp": dict(evals["lp"], holdout=0.0)}), str(trained / "trained"))


@pytest.mark.slow
def test_sharded_knn_equals_the_reference_search_on_encoder_and_pixel_features(trained):
  """The evaluator (sharded bank) against the host reference (extract + knn_predict), including
  raw pixels, whose bank and queries are both centred on their split's mean."""
  from lmim import probe  # pylint: disable=import-outside-toplevel
  r = probe.restore(str(trained / "trained"))
  state = evaluate.EvalState(r.params, None)
  mesh = lmim.sharding.make_mesh(mlc.ConfigDict(dict(data=-1, fsdp=1)))
  for feature in ("pooled_pre_norm", "pixels"):
    cfg = mlc.ConfigDict(dict(type="knn", data="mnist5k", split="test[:200]", train_split="train[:600]",
                              k=(1, 5), batch_size=40, feature=feature))
    ev = lmim.evaluators.from_config("knn", cfg, method=r.method, mesh=mesh)
    got = dict(ev.run(state))
    bank, bank_y = ev.spec.extract(state, ev.bank_src, ev.bank_info)
    q, y = ev.spec.extract(state, ev.query_src, ev.query_info)
    ref = knn.knn_predict(q, bank, bank_y, 10, (1, 5), 0.07)
    assert got["top1_k5"] == pytest.approx(100.0 * np.mean(ref[5] == y)), feature
    assert got["top1_1nn"] == pytest.approx(100.0 * np.mean(ref[1] == y)), feature


@pytest.mark.slow
def test_collapse_reads_the_ema_weights_the_checkpoint_holds(trained, caplog):
  """An evaluation config whose probes all read the online encoder still gives collapse the EMA
  (target) weights, so it reports target Sims and the method's own Sims, and says nothing false."""
  evals = {"collapse": dict(type="collapse", data="mnist5k", split="test[:128]", batch_size=64)}
  with caplog.at_level(logging.INFO, logger="lmim"):
    m = evaluate.evaluate(eval_config(evals), str(trained / "trained"))["metrics"]
  assert "collapse/sim_target" in m and "collapse/sim_trg" in m, sorted(m)
  assert m["collapse/sim_target"] != m["collapse/sim_online"]  # the EMA weights, not a copy of the online ones
  assert "lacks" not in caplog.text


@pytest.mark.slow
def test_results_on_one_and_eight_devices_match(trained):
  evals = demo_evals(split="test[:101]", train_split="train[:203]")  # odd sizes: padding must not count
  one = evaluate.evaluate(eval_config(evals), str(trained / "trained"), devices=jax.devices()[:1])
  eight = evaluate.evaluate(eval_config(evals), str(trained / "trained"), devices=jax.devices())
  for key, value in one["metrics"].items():
    assert eight["metrics"][key] == pytest.approx(value, abs=1e-6), key
  saved = json.loads(open(eight["path"]).read())
  assert saved["checkpoint_step"] == 600 and set(saved["metrics"]) == set(one["metrics"])


@pytest.mark.slow
def test_finetune_runs_sharded_and_learns(trained):
  base = dict(type="finetune", data="mnist5k", split="test[:200]", train_split="train[:1024]", warmup_epochs=1,
              batch_size=64, eval_batch_size=100, num_threads=2)
  evals = {"plain": dict(base, epochs=6, blr=1e-2, mixup=0.0, cutmix=0.0, rand_augment="", random_erasing=0.0,
                         drop_path=0.0, min_crop=0.5)}
  m = evaluate.evaluate(eval_config(evals), str(trained / "trained"))["metrics"]
  assert m["plain/top1"] > 40.0 and m["plain/top5"] >= m["plain/top1"]    # chance: 10%
  assert m["plain/top1_best"] >= m["plain/top1"] and 1 <= m["plain/best_epoch"] <= 6
  # (MAE's augmentation — mixup, cutmix, RandAugment, erasing — is tested piece by piece in
  # test_finetune_pieces: at this size, 3 epochs of the full recipe stay near chance, 14 %.)


@pytest.mark.slow
def test_finetune_reports_the_final_and_the_best_epoch_as_mae_logs_them(trained, monkeypatch):
  """Evaluated after every `eval_every_epochs` epochs and at the end; top1 is the last model's,
  top1_best the maximum (first epoch reaching it), as MAE's "Max accuracy"."""
  script = [(50.0, 80.0), (70.0, 95.0), (70.0, 96.0), (60.0, 92.0)]
  calls = []
  monkeypatch.setattr(finetune.Evaluator, "_evaluate", lambda self, *a: script[len(calls) - 1] if calls.append(1)
                      is None else None)
  base = dict(type="finetune", data="mnist5k", split="test[:100]", train_split="train[:128]", warmup_epochs=1,
              batch_size=64, eval_batch_size=100, num_threads=2, epochs=4, blr=1e-3, rand_augment="",
              mixup=0.0, cutmix=0.0)
  m = evaluate.evaluate(eval_config({"ft": base}), str(trained / "trained"))["metrics"]
  assert len(calls) == 4                                     # 2 steps per epoch, 4 epochs
  assert (m["ft/top1"], m["ft/top5"], m["ft/top1_best"], m["ft/best_epoch"]) == (60.0, 92.0, 70.0, 2.0)
  calls.clear()
  m = evaluate.evaluate(eval_config({"ft": dict(base, eval_every_epochs=3)}), str(trained / "trained"))["metrics"]
  assert len(calls) == 2 and m["ft/best_epoch"] == 4.0      # after epochs 3 and 4 (the end): 50 then 70


@pytest.mark.slow
def test_official_fixture_checkpoint_evaluates_on_mock_tfds_data(tmp_path):
  hp, sd, _, _ = load(fixture_dirs("official_lmim")[0])
  np.savez(tmp_path / "official.npz", **sd)
  convert.convert_checkpoint(convert.config_from_official(hp), str(tmp_path / "official.npz"), str(tmp_path / "wd"))
  with tfds.testing.mock_data(num_examples=24, policy=tfds.testing.MockPolicy.USE_CODE):
    evals = {"nn": dict(type="nn_loo", data="cifar10", split="test", batch_size=8, encoder="ema"),
             "knn": dict(type="knn", data="cifar10", split="test", train_split="train", k=(3,), batch_size=8,
                         feature="cls")}
    m = evaluate.evaluate(eval_config(evals), str(tmp_path / "wd"))["metrics"]
    # The same number by hand: the converted EMA encoder on the eval view, LOO 1-NN on its features.
    from lmim import data as lmim_data, probe  # pylint: disable=import-outside-toplevel
    from lmim.evaluators import features as feats_lib  # pylint: disable=import-outside-toplevel
    r = probe.restore(str(tmp_path / "wd"), ema=True)
    src, info = lmim_data.open_source("cifar10", "test")
    images = np.stack([lmim_data.transforms.eval_transform(src[i]["image"], size=r.method.eval_image_size,
                                                           mean=info.mean, std=info.std) for i in range(len(src))])
    f = np.asarray(feats_lib.select(r.method.encode(r.ema_params, jnp.asarray(images)), "pooled_pre_norm"))
    y = np.asarray([src[i]["label"] for i in range(len(src))])
  assert m["nn/top1"] == pytest.approx(nn_loo.loo_1nn_accuracy(f, y), abs=1e-9)
  assert "knn/top1_k3" in m


def test_preflight_lists_prepared_and_missing_datasets(tmp_path):
  cfg = eval_config({"nn": dict(type="nn_loo", data="mnist5k", split="test"),
                     "lp": dict(type="linear_probe", data="imagenet2012", split="validation",
                                data_dir=str(tmp_path))})
  rows = evaluate.preflight(cfg)
  assert sorted((r["eval"], r["split"], r["ok"]) for r in rows) == [
      ("lp", "train", False), ("lp", "validation", False), ("nn", "test", True)]
  assert all("lmim-prepare imagenet2012" in r["status"] for r in rows if not r["ok"])
  text = evaluate.format_preflight(rows)
  assert "MISSING" in text and "ready (1000 examples)" in text


def test_presets_build(tmp_path):
  for preset in ("official_nn", "dino_knn", "mae_linear", "mae_finetune", "mae_finetune_vitl", "dino_davis",
                 "fewshot", "collapse", "pictures", "all", "demo"):
    cfg = eval_presets.get_config(f"preset={preset}")
    assert len(cfg.evals) >= 1
  c = eval_presets.get_config("preset=mae_linear").evals.mae_linear
  assert (c.feature, c.blrs, c.batch_size, c.epochs, c.warmup_epochs, c.min_crop) == ("cls", (0.1,), 16384, 90, 10, 0.08)
  c = eval_presets.get_config("preset=mae_finetune_vitl").evals.mae_finetune_vitl
  assert (c.epochs, c.blr, c.layer_decay, c.drop_path, c.weight_decay, c.batch_size) == (50, 1e-3, 0.75, 0.2, 0.05, 1024)
  assert "mae_finetune_vitl" not in eval_presets.get_config("preset=all").evals
  with pytest.raises(ConfigError, match="preset"):
    eval_presets.get_config("preset=nope")


BAD = [
    ({"feature": "block9"}, "evals.nn.feature", "block index in [1, 2]"),
    ({"feature": "banana"}, "evals.nn.feature", "one of"),
    ({"image_size": 30}, "evals.nn.image_size", "a multiple of the patch size 4"),
    ({"encoder": "teacher"}, "evals.nn.encoder", "'online' or 'ema'"),
]


@pytest.mark.parametrize("fields,field,valid", BAD, ids=[b[1] + str(list(b[0].values())) for b in BAD])
@pytest.mark.slow
def test_bad_evaluator_fields_are_one_line(trained, fields, field, valid):
  evals = {"nn": dict(type="nn_loo", data="mnist5k", split="test[:50]", **fields)}
  with pytest.raises(ConfigError) as e:
    evaluate.evaluate(eval_config(evals), str(trained / "trained"))
  assert "\n" not in str(e.value) and str(e.value).startswith(f"config.{field}=") and valid in str(e.value)


@pytest.mark.slow
def test_bad_paths_and_unprepared_data(trained, tmp_path):
  evals = {"nn": dict(type="nn_loo", data="mnist5k", split="test[:50]")}
  with pytest.raises(CheckpointError, match="does not exist"):
    evaluate.evaluate(eval_config(evals), str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(CheckpointError, match="holds no lmim checkpoint"):
    evaluate.evaluate(eval_config(evals), str(tmp_path / "empty"))
  missing = {"nn": dict(type="nn_loo", data="imagenet2012", split="validation", data_dir=str(tmp_path))}
  with pytest.raises(DataNotPreparedError, match="lmim-prepare imagenet2012"):
    evaluate.evaluate(eval_config(missing), str(trained / "trained"))
  unknown = {"nn": dict(type="nn_loo", data="mnist5k", split="test", colour="blue")}
  with pytest.raises(ConfigError, match="not a field of 'nn_loo'"):
    evaluate.evaluate(eval_config(unknown), str(trained / "trained"))


@pytest.mark.slow
def test_evaluate_command_line_check_and_run(trained, tmp_path):
  """The standalone entry point: --check lists datasets, a run prints the table and features/s."""
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  wd = str(trained / "trained")
  run = lambda *a: subprocess.run([sys.executable, "-m", "lmim.evaluate", "--workdir", wd, *a], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=600)
  ok = run("--config", "configs/eval.py:preset=demo", "--check")
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert re.search(r"nn \(nn_loo\) +mnist5k / test  ->  OK ready \(1000 examples\)", ok.stdout), ok.stdout
  missing = run("--config", f"configs/eval.py:preset=dino_knn,data_dir={tmp_path}", "--check")
  assert missing.returncode == 1 and "MISSING" in missing.stdout and "lmim-prepare imagenet2012" in missing.stdout
  res = run("--config", "configs/eval.py:preset=demo", "--config.evals.linear.epochs=2",
            "--config.evals.linear.warmup_epochs=1", "--config.evals.collapse.split=test[:200]",
            "--config.evals.pictures.split=test[:100]")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "features/s" in res.stderr
  for metric in ("nn/top1", "knn/top1_k20", "linear/top1", "collapse/sim_online", "pictures/files_written"):
    assert metric in res.stdout
  path = res.stdout.strip().splitlines()[-1].split("results: ")[1]
  saved = json.loads(open(path, encoding="utf-8").read())
  assert saved["checkpoint_step"] == 600 and saved["metrics"]["pictures/files_written"] == 3
  assert len(os.listdir(os.path.join(wd, "eval", "pictures"))) >= 3
