"""Checkpoint facade: exact round trips, other meshes, strict trees, retention, crashes, inspection.

Runs on the 8 virtual CPU devices that conftest.py configures. The state is a small stand-in
with the real structure: nested-dict params, an EMA encoder, and an AdamW state whose weight
decay is masked (so it holds ScaleByAdamState, MaskedState and EmptyState namedtuples).
"""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from lmim.checkpoint import (TMP_SUFFIX, Checkpointer, abstract_like, find_checkpoint_dir,
                             format_diff, tree_diff)
from conftest import free_port
from lmim.errors import CheckpointError
from lmim import config_lib
from lmim.inspect_ckpt import inspect, main as inspect_main, summary

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
META = {"step": 5, "data_position": 320, "method": "latent_mim",
        "config": {"model": {"width": 8, "depth": 1}, "lr": 1e-3, "views": [1, 2], "name": "t"}}


def mesh(shape):
  devices = jax.devices()[:int(np.prod(shape))]
  return jax.make_mesh(shape, ("data", "fsdp"), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def fsdp(m):
  """FSDP as the trainer does it: the largest dimension split over 'fsdp' when it divides."""
  def sharding(x):
    dims = [None] * x.ndim
    if x.ndim:
      big = int(np.argmax(x.shape))
      if x.shape[big] % m.shape["fsdp"] == 0:
        dims[big] = "fsdp"
    return NamedSharding(m, P(*dims))
  return sharding


def make_items(m=None):
  """params, ema_params and a masked-AdamW opt_state after one update, on mesh `m` (FSDP)."""
  rng = np.random.default_rng(0)
  f32 = lambda *s: rng.standard_normal(s).astype(np.float32)
  params = {"encoder": {"blocks_0": {"kernel": f32(16, 8), "bias": f32(8)},
                        "cls_token": f32(1, 1, 8)},
            "decoder": {"pred": {"kernel": f32(8, 16)}}}
  ema = jax.tree.map(lambda x: x * 0.5, params["encoder"])
  tx = optax.adamw(1e-3, mask=lambda p: jax.tree.map(lambda x: x.ndim > 1, p))
  opt_state = tx.init(params)
  _, opt_state = tx.update(jax.tree.map(jnp.ones_like, params), opt_state, params)
  items = {"params": params, "ema_params": ema, "opt_state": opt_state}
  m = m or mesh((1, 8))
  return jax.tree.map(lambda x: jax.device_put(x, fsdp(m)(x)), items)


def assert_same(restored, expected, target=None):
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  if target is not None:
    for a, t in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
      assert a.sharding == t.sharding


def saved(tmp_path, items=None, steps=(5,), **kwargs):
  ck = Checkpointer(str(tmp_path / "w" / "checkpoints"), **kwargs)
  items = make_items() if items is None else items
  for step in steps:
    assert ck.save(step, items, {**META, "step": step})
  ck.wait()
  return ck, items


@pytest.mark.slow
def test_round_trip_is_exact_and_keeps_optax_types(tmp_path):
  ck, items = saved(tmp_path)
  target = abstract_like(items)  # each leaf's own sharding
  out = ck.restore(5, target)
  assert set(out) == {"params", "ema_params", "opt_state"}
  for k in items:
    assert_same(out[k], items[k], target[k])
  adam, masked, empty = out["opt_state"]
  assert isinstance(adam, optax.ScaleByAdamState) and int(adam.count) == 1
  assert isinstance(masked, optax.MaskedState) and isinstance(empty, optax.EmptyState)
  assert ck.restore_meta(5) == META and ck.restore_meta() == META
  assert ck.latest_step() == 5 and ck.all_steps() == [5]
  ck.close()
  ck.close()  # idempotent


def test_restore_onto_other_meshes(tmp_path):
  ck, items = saved(tmp_path)  # saved FSDP over 8 devices
  assert items["params"]["encoder"]["blocks_0"]["kernel"].sharding.spec == P("fsdp", None)
  for shape in ((1, 1), (2, 4)):
    m = mesh(shape)
    target = abstract_like({k: items[k] for k in ("params", "opt_state")}, fsdp(m))
    out = ck.restore(None, target)
    for k in target:
      assert_same(out[k], items[k], target[k])
    kernel = out["params"]["encoder"]["blocks_0"]["kernel"]
    assert len(kernel.sharding.device_set) == int(np.prod(shape))


def test_restore_one_item_alone(tmp_path):
  ck, items = saved(tmp_path)
  m = mesh((1, 1))
  for item in ("ema_params", "params"):
    out = ck.restore(5, {item: abstract_like(items[item], NamedSharding(m, P()))})
    assert set(out) == {item}
    assert_same(out[item], items[item])


def test_a_state_without_ema_saves_and_restores_the_rest(tmp_path):
  items = make_items()
  items["ema_params"] = None
  ck, _ = saved(tmp_path, items)
  assert ck.items(5) == ["opt_state", "params"]
  target = abstract_like({"params": items["params"], "ema_params": None})
  assert set(ck.restore(5, target)) == {"params"}
  with pytest.raises(CheckpointError, match=r"item 'ema_params' was not saved at step 5 "
                                            r"\(saved: opt_state, params\)"):
    ck.restore(5, abstract_like({"ema_params": items["params"]["encoder"]}))


def test_strict_restore_lists_missing_extra_and_mismatched_leaves(tmp_path):
  ck, items = saved(tmp_path)
  host = jax.tree.map(np.asarray, items["params"])
  del host["decoder"]["pred"]                                        # saved, not expected
  host["encoder"]["pos_embed"] = np.zeros((5, 8), np.float32)        # expected, not saved
  host["encoder"]["cls_token"] = np.zeros((1, 1, 32), np.float32)    # other shape
  host["encoder"]["blocks_0"]["bias"] = np.zeros(8, jnp.bfloat16)    # other dtype: never cast
  target = abstract_like(host, NamedSharding(mesh((1, 1)), P()))
  with pytest.raises(CheckpointError) as e:
    ck.restore(5, {"params": target, "ema_params": abstract_like(items["ema_params"])})
  msg = str(e.value)
  assert "\n" not in msg
  assert "item 'params' does not match" in msg and "ema_params" not in msg
  assert "missing from the checkpoint (1): encoder/pos_embed" in msg
  assert "extra in the checkpoint (1): decoder/pred/kernel" in msg
  assert "encoder/cls_token (saved (1, 1, 8) float32, expected (1, 1, 32) float32)" in msg
  assert "encoder/blocks_0/bias (saved (8,) float32, expected (8,) bfloat16)" in msg


def test_targets_must_carry_shardings(tmp_path):
  ck, items = saved(tmp_path)
  bare = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), items["params"])
  with pytest.raises(CheckpointError, match="carry no sharding.*abstract_like"):
    ck.restore(5, {"params": bare})


def test_shardings_that_cannot_hold_a_leaf_are_named_before_reading(tmp_path):
  ck, items = saved(tmp_path)
  m = mesh((1, 8))  # (1, 1, 8) split 8 ways on its first dimension cannot be laid out
  bad = abstract_like(items["params"],
                      lambda x: NamedSharding(m, P("fsdp") if x.ndim == 3 else P()))
  expected = (r"do not evenly divide their shapes "
              r"\(encoder/cls_token \(1, 1, 8\) over P\('fsdp',\)\)")
  with pytest.raises(CheckpointError, match=expected) as e:
    ck.restore(5, {"params": bad})
  assert "\n" not in str(e.value)


def test_tree_diff_and_format_diff():
  items = make_items()
  assert tree_diff(items["opt_state"], items["opt_state"]) == ([], [], [])
  missing, extra, mismatched = tree_diff({"a": np.zeros(2), "b": np.zeros(1)},
                                         {"a": np.zeros(3), "c": np.zeros(1)})
  assert (missing, extra) == (["b"], ["c"])
  assert mismatched == ["a (saved (3,) float64, expected (2,) float64)"]
  long = format_diff("params", [f"p{i}" for i in range(30)], [], [])
  assert "missing from the checkpoint (30): p0, p1" in long and "... and 5 more" in long


def test_retention_keeps_the_last_n_plus_every_kth(tmp_path):
  ck = Checkpointer(str(tmp_path / "ck"), keep_last=2, keep_every_steps=4)
  items = make_items()
  history = {}
  for step in range(1, 10):
    ck.save(step, items, {"step": step})
    ck.wait()  # retention is applied when a save commits
    history[step] = ck.all_steps()
  # The kept-forever steps count towards the newest keep_last: after 8, the newest two are 7, 8.
  assert history[4] == [3, 4] and history[5] == [4, 5] and history[8] == [4, 7, 8]
  assert history[9] == [4, 8, 9]
  assert sorted(os.listdir(tmp_path / "ck")) == ["4", "8", "9"]
  ck.close()
  assert Checkpointer(str(tmp_path / "ck"), create=False).all_steps() == [4, 8, 9]


def test_saved_steps_are_never_overwritten(tmp_path):
  ck, items = saved(tmp_path, steps=(3,), async_save=False)
  assert not ck.save(3, items, {})        # Orbax's own policy: not above the latest, skipped
  with pytest.raises(CheckpointError, match="already holds step 3"):
    ck.save(3, items, {}, force=True)
  with pytest.raises(CheckpointError, match="not JSON-serialisable"):
    ck.save(4, items, {"x": object()})
  assert ck.all_steps() == [3]


def test_missing_steps_and_paths_are_clear_errors(tmp_path):
  ck, _ = saved(tmp_path, steps=(3,))
  with pytest.raises(CheckpointError, match=r"no checkpoint at step 7 \(steps: \[3\]\)"):
    ck.restore_meta(7)
  with pytest.raises(CheckpointError, match=r"no checkpoint at step 7"):
    ck.restore(7, {"params": abstract_like(make_items()["params"])})
  wd = str(tmp_path / "w")
  assert find_checkpoint_dir(wd) == os.path.join(wd, "checkpoints")
  assert find_checkpoint_dir(os.path.join(wd, "checkpoints")) == os.path.join(wd, "checkpoints")
  (tmp_path / "empty").mkdir()
  with pytest.raises(CheckpointError, match="empty holds no lmim checkpoint"):
    find_checkpoint_dir(str(tmp_path / "empty"))
  with pytest.raises(CheckpointError, match="holds no lmim checkpoint: the path does not exist"):
    find_checkpoint_dir(str(tmp_path / "nope"))
  with pytest.raises(CheckpointError, match="holds no lmim checkpoint"):
    Checkpointer(str(tmp_path / "empty"), create=False).restore_meta()
  assert not (tmp_path / "nope").exists()
  Checkpointer(str(tmp_path / "nope"), create=False)
  assert not (tmp_path / "nope").exists()  # readers never create directories


def test_leftover_temporary_directories_are_ignored_and_replaced(tmp_path):
  """What a crash mid-save leaves (Orbax 0.12.8 names it `<step>.orbax-checkpoint-tmp`)."""
  ck, items = saved(tmp_path, steps=(2,))
  ck.close()
  d = tmp_path / "w" / "checkpoints"
  for name in (f"3{TMP_SUFFIX}", f"4{TMP_SUFFIX}-1234567890"):  # current and older naming
    (d / name / "params").mkdir(parents=True)
    (d / name / "params" / "garbage").write_bytes(b"\x00" * 10)
  ck = Checkpointer(str(d))
  assert ck.latest_step() == 2 and ck.all_steps() == [2]
  assert find_checkpoint_dir(str(tmp_path / "w")) == str(d)
  assert ck.restore_meta()["step"] == 2
  assert ck.save(3, items, {"step": 3})  # the resumed run saves the same step again
  ck.wait()
  assert ck.all_steps() == [2, 3] and not (d / f"3{TMP_SUFFIX}").exists()
  assert_same(ck.restore(3, {"params": abstract_like(items["params"])})["params"], items["params"])


_CRASH = """
import os, sys
import numpy as np
from orbax.checkpoint._src.path import atomicity
from lmim.checkpoint import Checkpointer

ck = Checkpointer(sys.argv[1])
items = {"params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}}
ck.save(1, items, {"step": 1})
ck.wait()

async def die(*args, **kwargs):  # the process dies with every byte written, before the rename
  os._exit(17)

atomicity.AtomicRenameTemporaryPath.finalize = die
ck.save(2, {"params": {"w": np.ones((3, 4), np.float32)}}, {"step": 2})
ck.wait()
"""


def test_a_process_killed_mid_save_loses_nothing(tmp_path):
  d = tmp_path / "checkpoints"
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  proc = subprocess.run([sys.executable, "-c", _CRASH, str(d)], env=env,
                        capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 17, proc.stderr[-2000:]
  assert sorted(os.listdir(d)) == ["1", f"2{TMP_SUFFIX}"]
  ck = Checkpointer(str(d), create=False, read_only=True)
  assert ck.latest_step() == 1
  target = {"params": {"w": jax.ShapeDtypeStruct((3, 4), np.float32,
                                                  sharding=NamedSharding(mesh((1, 1)), P()))}}
  np.testing.assert_array_equal(ck.restore(None, target)["params"]["w"],
                                np.arange(12, dtype=np.float32).reshape(3, 4))
  with pytest.raises(CheckpointError, match="read-only"):
    ck.save(2, {"params": {"w": np.zeros(1)}}, {})
  assert f"unfinished saves (ignored): 2{TMP_SUFFIX}" in inspect(str(d))


_WORKER = """
import sys
import jax
jax.config.update("jax_num_cpu_devices", 4)
jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2,
                           process_id=int(sys.argv[1]))
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from lmim.checkpoint import Checkpointer, abstract_like

m = jax.make_mesh((2, 4), ("data", "fsdp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
host = {"kernel": np.arange(128, dtype=np.float32).reshape(16, 8), "count": np.int32(7)}
glob = lambda x, spec: jax.make_array_from_callback(x.shape, NamedSharding(m, spec), lambda i: x[i])
params = {"kernel": glob(host["kernel"], P("fsdp", None)), "count": glob(host["count"], P())}
ck = Checkpointer(sys.argv[3])
ck.save(1, {"params": params}, {"step": 1, "process_count": jax.process_count()})
ck.wait()
out = ck.restore(1, {"params": abstract_like(params)})["params"]
for shard in out["kernel"].addressable_shards:
  assert np.array_equal(shard.data, host["kernel"][shard.index])
ck.close()
"""


def test_two_processes_save_and_one_restores(tmp_path):
  """Both processes of a 2-host job call save; a single process restores it onto other meshes."""
  d = str(tmp_path / "checkpoints")
  env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
  address = f"127.0.0.1:{free_port()}"
  procs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(i), address, d], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=120)[0] for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
  ck = Checkpointer(d, create=False)
  assert ck.all_steps() == [1] and ck.restore_meta()["process_count"] == 2
  for shape in ((1, 1), (2, 4)):
    m = mesh(shape)
    kernel_sharding = fsdp(m)(np.zeros((16, 8)))
    target = {"kernel": jax.ShapeDtypeStruct((16, 8), np.float32, sharding=kernel_sharding),
              "count": jax.ShapeDtypeStruct((), np.int32, sharding=NamedSharding(m, P()))}
    out = ck.restore(1, {"params": target})["params"]
    np.testing.assert_array_equal(out["kernel"], np.arange(128, dtype=np.float32).reshape(16, 8))
    assert int(out["count"]) == 7 and out["kernel"].sharding == target["kernel"].sharding


def test_multi_process_saves_refuse_process_local_arrays(tmp_path, monkeypatch):
  """Orbax would fail mid-save (leaving a temporary directory); we refuse before writing."""
  ck = Checkpointer(str(tmp_path / "ck"))
  monkeypatch.setattr(jax, "process_count", lambda: 2)  # every array here is process-local
  with pytest.raises(CheckpointError, match=r"2-process job.*, params/decoder/pred/kernel, "):
    ck.save(1, make_items(), {})
  assert os.listdir(tmp_path / "ck") == []


def test_inspect_lists_steps_leaves_and_meta(tmp_path, capsys):
  saved(tmp_path, steps=(4, 8))
  wd = str(tmp_path / "w")
  text = inspect(wd)
  assert f"checkpoint directory: {os.path.join(wd, 'checkpoints')}" in text
  assert "steps: 4, 8 (latest)" in text and "step 8:" in text
  assert "data position: 320 (global example index)" in text
  lines = text.splitlines()
  assert any(l.split() == ["encoder/blocks_0/kernel", "(16,", "8)", "float32"] for l in lines)
  assert any(l.split() == ["0/mu/decoder/pred/kernel", "(8,", "16)", "float32"] for l in lines)
  assert "[params] 4 arrays, 272 values, 1,088 bytes" in text
  assert '"width": 8' in text and '"depth": 1' in text
  assert "step 4:" in inspect(wd, step=4)
  assert inspect_main([wd, "--step", "8", "--full"]) == 0
  assert "[opt_state]" in capsys.readouterr().out


def test_inspect_summary_is_a_screenful_with_parameters_and_config_changes(tmp_path, capsys):
  """The default view: steps, progress, item sizes, parameters per network, the fields changed
  from the method's defaults (the config as the run wrote it); no per-array listing."""
  ck, _ = saved(tmp_path, steps=(4, 8))
  user = config_lib.base_config().to_dict()
  user["batch_size"], user["model"]["width"] = 40, 8
  ck.save(12, make_items(), {**META, "step": 12, "user_config": user,
                             "config": {**user, "total_steps": 20},
                             "data": {"name": "mnist5k", "num_examples": 4000, "channels": 1}})
  ck.wait()
  wd = str(tmp_path / "w")
  assert inspect_main([wd]) == 0
  text = capsys.readouterr().out
  lines = text.splitlines()
  assert lines[0].endswith("3 step(s) saved: 4, 8, 12")
  assert lines[1].startswith("step 12 of 20 (latent_mim), data position 320")
  assert "trainable parameters: 272 (decoder 128, encoder 144)" in text
  assert "data: mnist5k, 4,000 examples, 1 channel" in text
  assert "config: 2 field(s) differ from the latent_mim defaults" in text
  assert "  batch_size: default 4096 -> 40" in lines and "  model.width: default None -> 8" in lines
  assert "encoder/blocks_0/kernel" not in text and len(lines) < 15
  assert "step 8 (latent_mim)" in summary(wd, step=8)
  for argv in ([str(tmp_path / "nope")], [wd, "--step", "5"]):
    assert inspect_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmim: error: ") and err.count("\n") == 1
