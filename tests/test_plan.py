"""lmim.plan: the train step compiled ahead of time (never run) on virtual devices, for sizing."""
import json
import os
import subprocess
import sys
import time

import jax
import pytest

from lmim import plan, train
from tiny import tiny_config

pytestmark = pytest.mark.slow  # compiles the train step over 64 virtual devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Deep enough (8 blocks, 56 of 64 patches visible) that the encoder's activations dominate; the
# blocks are scanned, where XLA:CPU honours rematerialisation (unscanned, XLA:CPU folds the
# recomputation back into the forward pass and shows no saving).
DEEP = {"model.depth": 8, "model.width": 64, "model.num_heads": 2, "model.grid_size": 8,
        "views.num_vis": 56, "batch_size": 256, "sim_reg.group_size": 32, "model.scan_layers": True,
        "fsdp_min_size_mb": 0.0}


@pytest.fixture(scope="module")
def no_execution():
  """Any compiled executable that runs, or a train state that is initialised, fails the test."""
  calls = []
  orig_call = jax.stages.Compiled.__call__
  orig_build = train.build

  def compiled_call(self, *a, **k):
    calls.append("compiled")
    return orig_call(self, *a, **k)

  def build(*a, **k):
    setup = orig_build(*a, **k)
    init = setup.init_fn

    class Guarded:  # jax.eval_shape traces through it; a concrete call is an initialisation
      def __call__(self, key):
        if not isinstance(key, jax.core.Tracer):
          calls.append("init")
        return init(key)
    setup.init_fn = Guarded()
    return setup

  mp = pytest.MonkeyPatch()
  mp.setattr(jax.stages.Compiled, "__call__", compiled_call)
  mp.setattr(train, "build", build)
  yield calls
  mp.undo()


@pytest.fixture(scope="module")
def plans(no_execution, tmp_path_factory):
  """Planned from an empty working directory, which must stay empty (no workdir, no checkpoint)."""
  cwd = tmp_path_factory.mktemp("plan_cwd")
  mp = pytest.MonkeyPatch()
  mp.chdir(cwd)
  out = {"cwd": cwd}
  for name, overrides in (("dp", {}), ("fsdp", {"mesh.fsdp": 8}), ("remat", {"model.remat": "full"})):
    t0 = time.perf_counter()
    out[name] = plan.plan(tiny_config(**{**DEEP, **overrides}), 8)
    out[name]["wall_s"] = time.perf_counter() - t0
  mp.undo()
  return out


def test_plan_reports_memory_and_flops_without_running(plans, no_execution):
  r = plans["dp"]
  assert no_execution == []  # nothing compiled was called, no state initialised
  assert r["executed"] is False and r["devices"] == 8 and r["mesh_data"] == 8 and r["mesh_fsdp"] == 1
  assert r["global_batch"] == 256 and r["per_device_batch"] == 32
  for k in ("argument_bytes", "output_bytes", "temp_bytes", "alias_bytes", "peak_bytes", "state_bytes",
            "flops_per_device", "flops_total"):
    assert r[k] > 0, k
  assert r["peak_bytes"] == r["argument_bytes"] + r["output_bytes"] + r["temp_bytes"] - r["alias_bytes"]
  # The donated state is aliased by the new state; the arguments hold the state shard and the batch.
  assert r["alias_bytes"] >= r["state_bytes"]
  assert r["argument_bytes"] >= r["state_bytes"] + 32 * 3 * r["image_size"] ** 2 * 4
  # scan_layers -> FLOPs counted on the unscanned global program (XLA counts a scan body once).
  assert r["flops_source"].startswith("lowered unscanned")
  assert r["flops_total_compiled"] < r["flops_total"]
  assert r["compile_s"] < r["wall_s"] < 300
  assert not os.listdir(plans["cwd"])
  text = plan.format_report(r)
  assert "peak estimate" in text and "nothing executed" in text and "XLA:CPU" in text


def test_fsdp_shards_the_state(plans):
  dp, fsdp = plans["dp"], plans["fsdp"]
  assert fsdp["mesh_fsdp"] == 8 and fsdp["mesh_data"] == 1
  assert fsdp["state_bytes_unsharded"] == dp["state_bytes_unsharded"] == dp["state_bytes"]
  assert fsdp["state_bytes"] < dp["state_bytes"] / 4
  assert fsdp["argument_bytes"] < dp["argument_bytes"]


def test_remat_trades_flops_for_temp_memory(plans):
  none, full = plans["dp"], plans["remat"]
  assert full["remat"] == "full" and none["remat"] == "none"
  assert full["temp_bytes"] <= 0.8 * none["temp_bytes"]
  assert full["flops_total"] > none["flops_total"]  # the forward pass is recomputed


def test_too_few_devices_is_a_clear_error():
  with pytest.raises(plan.PlanError, match="JAX_NUM_CPU_DEVICES=64"):
    plan.plan(tiny_config(), 64)


def _cli(*args, timeout=600):
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("JAX_NUM_CPU_DEVICES", None)
  env.pop("XLA_FLAGS", None)
  return subprocess.run([sys.executable, "-m", "lmim.plan", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout, check=False)


def test_cli_vitb16_batch4096_on_64_devices():
  """The official recipe as given: ViT-B/16, batch 4096, on 64 virtual devices (~40 s here)."""
  t0 = time.perf_counter()
  p = _cli("--config", "configs/lmim_vitb16_in1k.py", "--devices", "64", "--json", "--global_flops")
  wall = time.perf_counter() - t0
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.loads(p.stdout.strip().splitlines()[-1])
  assert (r["variant"], r["encoder_width"], r["encoder_depth"], r["encoder_patch_size"]) == ("B/16", 768, 12, 16)
  assert (r["global_batch"], r["devices"], r["per_device_batch"], r["platform"]) == (4096, 64, 64, "cpu")
  assert (r["mesh_data"], r["mesh_fsdp"], r["image_size"], r["executed"]) == (64, 1, 280, False)
  assert 1e9 < r["peak_bytes"] < 64 * 2 ** 30 and r["temp_bytes"] > 0
  # Data parallel: every device holds the whole state (122M params + EMA encoder + 2 Adam moments).
  assert r["state_bytes"] == r["state_bytes_unsharded"]
  assert 120e6 < r["trainable_params"] < 125e6
  # XLA:CPU's compiled cost is per device: x64 it must match the global (unpartitioned) count.
  assert r["flops_total_compiled"] == pytest.approx(r["flops_total"], rel=0.05)
  # At least the EMA target's forward pass over 196 tokens (2 FLOPs per weight per token, 86M
  # encoder weights), at most a few times that (online encoder on 20 patches, 3x4096 projector,
  # decoder, backward).
  per_image = r["flops_total"] / 4096
  assert 2 * 86e6 * 196 < per_image < 4 * 2 * 86e6 * 196
  assert wall < 300, wall


def test_cli_bad_mesh_is_one_line_exit_2():
  p = _cli("--config", "configs/lmim_vitb16_in1k.py", "--devices", "12", "--config.mesh.fsdp=8", timeout=120)
  assert p.returncode == 2
  lines = p.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("lmim: error: config.mesh=") and "12" in lines[0], p.stderr
  assert "Traceback" not in p.stderr and p.stdout == ""


def test_plan_puts_the_other_compute_dtype_beside(no_execution):
  """float32 plans also show bfloat16's memory and FLOPs (and the reverse): the same matmul count,
  the other dtype's bytes, from a second compilation of the same step."""
  cfg = tiny_config(**DEEP)
  r = plan.with_other_dtypes(cfg, 8, plan.plan(cfg, 8))
  (other,) = r["other_dtypes"]
  assert r["dtype"] == "float32" and other["dtype"] == "bfloat16"
  assert other["flops_total"] == pytest.approx(r["flops_total"], rel=0.02)
  assert other["peak_bytes"] != r["peak_bytes"]                # a real second compilation
  report = plan.format_report(r)
  assert "With model.dtype=bfloat16: peak" in report
  bf = tiny_config(**DEEP, **{"model.dtype": "bfloat16"})
  assert [o["dtype"] for o in plan.with_other_dtypes(bf, 8, plan.plan(bf, 8))["other_dtypes"]] == ["float32"]
  assert no_execution == []
