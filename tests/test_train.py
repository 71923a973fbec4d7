"""The trainer: sharding invariance, no recompilation, exact resume, gradient accumulation."""
import jax
import numpy as np
import pytest

from lmim import train
from stepping import assert_params_close, assert_trees_close, one_step
from tiny import tiny_config


@pytest.fixture(scope="module")
def single_device_step():
  return one_step(tiny_config(**{"mesh.data": 1, "mesh.fsdp": 1}), jax.devices()[:1])


@pytest.mark.parametrize("data,fsdp", [(2, 4), (8, 1)])
@pytest.mark.slow
def test_sharded_step_equals_single_device_step(single_device_step, data, fsdp):
  # fsdp_min_size_mb=0 shards every parameter with a dimension divisible by the fsdp size.
  cfg = tiny_config(**{"mesh.data": data, "mesh.fsdp": fsdp, "fsdp_min_size_mb": 0.0})
  out, ref = one_step(cfg, jax.devices()), single_device_step
  np.testing.assert_allclose(out["metrics"]["loss"], ref["metrics"]["loss"], rtol=1e-5)
  assert_params_close(out, ref, 1e-5)
  assert_trees_close(out["ema"], ref["ema"], 1e-5)  # step 0: the EMA of identical weights


def test_fsdp_actually_shards_parameters():
  cfg = tiny_config(**{"mesh.data": 2, "mesh.fsdp": 4, "fsdp_min_size_mb": 0.0})
  setup = train.prepare(cfg)
  state = setup.init_fn(setup.init_key)
  qkv = state.params["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]  # (32, 96)
  assert qkv.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp")
  mu = state.opt_state[0].mu["encoder"]["blocks_0"]["attn"]["qkv"]["kernel"]
  assert mu.sharding.spec == qkv.sharding.spec  # optimiser moments follow their parameter


@pytest.mark.slow
def test_no_recompilation_after_the_first_step():
  setup = train.prepare(tiny_config())
  state = setup.init_fn(setup.init_key)
  batches = train.train_batches(setup, 0)
  losses = []
  for _ in range(3):
    state, m = setup.step_fn(state, train.device_batch(setup, next(batches)), setup.step_key)
    losses.append(m["loss"])
  jax.block_until_ready(losses)
  assert len(setup.traces) == 1
  assert setup.step_fn._cache_size() == 1  # pylint: disable=protected-access
  assert int(state.step) == 3


@pytest.mark.parametrize("dropout", [False, True], ids=["plain", "drop_path"])
@pytest.mark.slow
def test_gradient_accumulation_equals_the_larger_batch(dropout):
  """2 micro-batches of 8 = one batch of 16: same examples, same views, same Sim groups, and with
  drop path and dropout on, the same per-example draws."""
  drop = {"model.drop_path": 0.5, "model.attn_drop": 0.2, "model.proj_drop": 0.2} if dropout else {}
  big = one_step(tiny_config(**{"mesh.data": 1, "accum_steps": 1, "model.depth": 2, **drop}), jax.devices()[:1])
  acc = one_step(tiny_config(**{"mesh.data": 1, "accum_steps": 2, "model.depth": 2, **drop}), jax.devices()[:1])
  np.testing.assert_allclose(acc["metrics"]["loss"], big["metrics"]["loss"], rtol=1e-5)
  assert_params_close(acc, big, 1e-6)


@pytest.mark.slow
def test_resume_equals_uninterrupted_training(tmp_path):
  cfg = tiny_config()
  full = train.train(cfg, str(tmp_path / "full"))
  train.train(cfg, str(tmp_path / "split"), stop_after_steps=3)
  resumed = train.train(cfg, str(tmp_path / "split"))
  assert full["step"] == resumed["step"] == 6
  for a, b in zip(jax.tree.leaves(jax.device_get(full["state"].params)),
                  jax.tree.leaves(jax.device_get(resumed["state"].params))):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(jax.tree.leaves(jax.device_get(full["state"].ema_params)),
                  jax.tree.leaves(jax.device_get(resumed["state"].ema_params))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_profile_steps_writes_a_trace_of_those_steps(tmp_path):
  cfg = tiny_config(**{"profile_steps": "2:4"})
  train.train(cfg, str(tmp_path))
  traces = list((tmp_path / "profile").rglob("*.xplane.pb"))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  log = (tmp_path / "log.txt").read_text()
  assert "Profiling steps 2..3" in log and "Wrote the profile" in log
