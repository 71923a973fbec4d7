"""Checkpoint facade: exact round trips, restore onto other meshes, strict trees, retention, crashes."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lmim import optim
from lmim.checkpoint import Checkpointer, find_checkpoint_dir, tree_diff
from lmim.errors import CheckpointError
from lmim.inspect_ckpt import inspect


def make_items():
  rng = np.random.default_rng(0)
  params = {"encoder": {"blocks_0": {"attn": {"qkv": {"kernel": rng.standard_normal((16, 48)).astype(np.float32),
                                                      "bias": np.zeros(48, np.float32)}}},
                        "cls_token": rng.standard_normal((1, 1, 16)).astype(np.float32)},
            "decoder": {"head": {"kernel": rng.standard_normal((8, 16)).astype(np.float32)}}}
  tx = optax.adamw(1e-3, mask=optim.decay_mask)
  opt_state = tx.init(params)
  _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
  return {"params": params, "ema_params": params["encoder"], "opt_state": opt_state}


def abstract(tree, sharding_fn):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_fn(x)), tree)


def mesh(shape, devices=None):
  devices = devices or jax.devices()[:int(np.prod(shape))]
  return jax.make_mesh(shape, ("data", "fsdp"), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def fsdp(m):
  def spec(x):
    dims = [None] * x.ndim
    if x.ndim and x.shape[-1] % m.shape["fsdp"] == 0:
      dims[-1] = "fsdp"
    return NamedSharding(m, P(*dims))
  return spec


def test_round_trip_is_exact_and_keeps_optax_types(tmp_path):
  items = make_items()
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(5, items, {"step": 5, "config": {"a": 1}})
  ck.wait()
  m1 = mesh((1, 1))
  target = {k: abstract(v, lambda x: NamedSharding(m1, P())) for k, v in items.items()}
  out = ck.restore(5, target)
  for k in items:
    assert jax.tree.structure(out[k]) == jax.tree.structure(items[k])
    for a, b in zip(jax.tree.leaves(out[k]), jax.tree.leaves(items[k])):
      np.testing.assert_array_equal(np.asarray(a), b)
  assert isinstance(out["opt_state"][0], optax.ScaleByAdamState)
  assert ck.restore_meta(5) == {"step": 5, "config": {"a": 1}}


def test_restore_onto_other_meshes(tmp_path):
  items = make_items()
  m8 = mesh((1, 8))
  sharded = {k: jax.tree.map(lambda x: jax.device_put(x, fsdp(m8)(x)), v) for k, v in items.items()}
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(1, sharded, {})
  ck.wait()
  for m in (mesh((1, 1)), mesh((2, 4))):
    target = {"params": abstract(items["params"], fsdp(m))}
    out = ck.restore(1, target)["params"]
    for a, b, t in zip(jax.tree.leaves(out), jax.tree.leaves(items["params"]), jax.tree.leaves(target["params"])):
      np.testing.assert_array_equal(np.asarray(a), b)
      assert a.sharding == t.sharding


def test_restore_one_item_alone(tmp_path):
  items = make_items()
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(1, items, {})
  ck.wait()
  m = mesh((1, 1))
  out = ck.restore(None, {"ema_params": abstract(items["ema_params"], lambda x: NamedSharding(m, P()))})
  assert set(out) == {"ema_params"}


def test_strict_restore_lists_missing_extra_and_mismatched_leaves(tmp_path):
  items = make_items()
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(1, items, {})
  ck.wait()
  m = mesh((1, 1))
  wrong = jax.tree.map(lambda x: x, items["params"])
  del wrong["decoder"]["head"]                                    # missing from the target
  wrong["encoder"]["pos_embed"] = np.zeros((5, 16), np.float32)   # not in the checkpoint
  wrong["encoder"]["cls_token"] = np.zeros((1, 1, 32), np.float32)  # shape differs
  with pytest.raises(CheckpointError) as e:
    ck.restore(1, {"params": abstract(wrong, lambda x: NamedSharding(m, P()))})
  msg = str(e.value)
  assert "extra in the checkpoint (1): decoder/head/kernel" in msg
  assert "missing from the checkpoint (1): encoder/pos_embed" in msg
  assert "encoder/cls_token (saved (1, 1, 16) float32, expected (1, 1, 32) float32)" in msg


def test_tree_diff_on_identical_trees_is_empty():
  items = make_items()
  assert tree_diff(items["opt_state"], items["opt_state"]) == ([], [], [])


def test_retention_keeps_last_n_and_every_kth(tmp_path):
  items = make_items()
  ck = Checkpointer(str(tmp_path / "ck"), keep_last=2, keep_every_steps=4)
  for step in range(1, 10):
    ck.save(step, items, {"step": step})
  ck.wait()
  assert ck.all_steps() == [4, 8, 9]


def test_missing_step_and_empty_workdir_are_clear_errors(tmp_path):
  items = make_items()
  ck = Checkpointer(str(tmp_path / "w" / "checkpoints"))
  ck.save(3, items, {})
  ck.wait()
  with pytest.raises(CheckpointError, match=r"no checkpoint at step 7 \(steps: \[3\]\)"):
    ck.restore_meta(7)
  assert find_checkpoint_dir(str(tmp_path / "w")).endswith("checkpoints")
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="holds no lmim checkpoint"):
    find_checkpoint_dir(str(tmp_path / "empty"))
  with pytest.raises(CheckpointError, match="does not exist"):
    find_checkpoint_dir(str(tmp_path / "nope"))


def test_unfinished_save_is_invisible_and_harmless(tmp_path):
  """A crash mid-save leaves a temporary directory: it must never be taken as the latest step."""
  items = make_items()
  d = tmp_path / "ck"
  ck = Checkpointer(str(d))
  ck.save(2, items, {"step": 2})
  ck.wait()
  ck.close()
  partial = d / "3.orbax-checkpoint-tmp-1234567890"
  (partial / "params").mkdir(parents=True)
  (partial / "params" / "garbage").write_bytes(b"\x00" * 10)
  ck = Checkpointer(str(d))
  assert ck.latest_step() == 2
  assert ck.restore_meta() == {"step": 2}


def test_inspect_lists_steps_shapes_and_config(tmp_path):
  items = make_items()
  ck = Checkpointer(str(tmp_path / "w" / "checkpoints"))
  ck.save(4, items, {"step": 4, "data_position": 64, "config": {"model": {"width": 16}}})
  ck.wait()
  text = inspect(str(tmp_path / "w"))
  assert "steps: 4 (latest)" in text and "data position 64" in text
  assert "encoder/blocks_0/attn/qkv/kernel" in text and "(16, 48)" in text
  assert '"width": 16' in text
  assert os.path.isdir(tmp_path / "w" / "checkpoints" / "4")
