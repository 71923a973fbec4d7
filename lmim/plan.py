"""Memory planning: compile the exact train step ahead of time on N virtual CPU devices.

    python -m lmim.plan --config configs/lmim_vitb16_in1k.py --devices 64
    python -m lmim.plan --config configs/lmim_vitb16_in1k.py:variant=L/16 --devices 64 \
        --config.mesh.fsdp=8 --config.model.remat=full [--json]
    python -m lmim.plan --table            # the README table (ViT-B/L/H on common slices)

The step is `lmim.train.build(...).step_fn`, the trainer's own jit with its shardings and state
donation. It is lowered and compiled against abstract inputs (ShapeDtypeStructs carrying the
shardings), so nothing runs: no data, no parameter initialisation, no checkpoint, no workdir.
What comes back is XLA's per-device view of the SPMD-partitioned program:

  memory    `compiled.memory_analysis()`: arguments (the train state shard + the batch shard +
            key), outputs, temporaries, generated code and aliased bytes (outputs that reuse the
            donated state). Peak estimate = argument + output + temp - alias: the buffers live at
            the worst point of the step on one device, given donation.
  state     parameter / EMA / optimiser bytes per device, from the shard shapes of the state.
  FLOPs     `compiled.cost_analysis()` of the per-device program, times the device count for the
            whole step. XLA counts a `lax.scan` body once: with model.scan_layers=True (or
            accum_steps > 1, which the figure is scaled for) the count is too low, so by default
            FLOPs are also counted by lowering (not compiling) the unscanned global program.

Caveat: this is XLA:CPU's compilation. TPU/GPU XLA fuses, lays out and schedules differently
(and may hold collective buffers CPU does not), so treat the numbers as an estimate of what the
accelerator would allocate - good for sizing a slice and comparing meshes/remat policies, not a
guarantee; leave headroom (say 10-20%) on the real device's HBM. Rematerialisation in particular:
with unscanned blocks XLA:CPU folds the recomputation back into the forward pass (its CSE and
scheduling), so remat='full' shows extra FLOPs but no memory saving; with model.scan_layers=True
the saving shows (the scan keeps only each block's input), as it would on TPU/GPU.

The number of CPU devices must be fixed before JAX starts its backend, so the CLI sets
`jax_platforms=cpu` and `jax_num_cpu_devices=N` first (and re-executes itself with
JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES=N if the backend was already up). `plan(config, N)` uses
the first N devices of the current process and raises PlanError if there are fewer.
"""
import math
import os
import sys
import time

import jax
import numpy as np

from lmim import sharding
from lmim.errors import LmimError
from lmim.models import layers

GIB = 2 ** 30
CPU_CAVEAT = ("estimate from XLA:CPU's compilation of the same SPMD program; TPU/GPU XLA fuses and "
              "lays out differently, keep 10-20% HBM headroom")
IMAGENET_EXAMPLES = 1_281_167


class PlanError(LmimError):
  """Not enough devices in this process to plan for N of them."""


def imagenet_info(channels: int = 3):
  """A DataInfo for ImageNet-1k train without opening the dataset."""
  from lmim import data  # pylint: disable=import-outside-toplevel
  mean, std = data.sources.IMAGENET_STATS if channels == 3 else ((0.5,) * channels, (0.25,) * channels)
  return data.DataInfo(name="imagenet2012", num_examples=IMAGENET_EXAMPLES, num_classes=1000,
                       channels=channels, mean=mean, std=std)


def _devices(num_devices: int):
  devices = jax.devices()
  if num_devices < 1:
    raise PlanError(f"--devices={num_devices} is invalid: must be >= 1")
  if len(devices) < num_devices:
    raise PlanError(f"this process has {len(devices)} {devices[0].platform} device(s), {num_devices} "
                    f"requested: run `python -m lmim.plan --devices {num_devices} ...` (it starts with "
                    f"JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES={num_devices}), or set those before JAX starts")
  return devices[:num_devices]


def _bytes_per_device(tree) -> tuple[int, int]:
  """(bytes of one device's shard, bytes of the whole array) summed over a tree of abstract arrays."""
  shard = full = 0
  for x in jax.tree.leaves(tree):
    item = np.dtype(x.dtype).itemsize
    full += math.prod(x.shape) * item
    shard += math.prod(x.sharding.shard_shape(x.shape)) * item
  return shard, full


def _cost(obj) -> dict:
  cost = obj.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost or {}


def _abstract_inputs(setup):
  from lmim import train  # pylint: disable=import-outside-toplevel
  cfg, method = setup.config, setup.method
  state = train.abstract_state(setup)
  k, size, c = cfg.accum_steps, method.train_image_size, setup.info.channels
  shape = (k, cfg.batch_size // k, size, size, c)
  batch = {name: jax.ShapeDtypeStruct(shape, np.float32, sharding=sh)
           for name, sh in setup.batch_shardings.items()}
  key = jax.ShapeDtypeStruct(setup.step_key.shape, setup.step_key.dtype, sharding=setup.step_key.sharding)
  return state, batch, key


def plan(config, num_devices: int, *, info=None, global_flops: bool | None = None) -> dict:
  """Compile (never run) the train step of `config` on the first `num_devices` devices.

  Returns a flat dict of per-device memory (bytes), state bytes per device, FLOPs per step and the
  compile time. Numbers come from XLA:CPU here: an estimate of the accelerator's allocation (see
  the module docstring). `global_flops` (default: when the step has a scan XLA would undercount)
  also lowers the unscanned program to count FLOPs exactly.
  """
  from lmim import train  # pylint: disable=import-outside-toplevel
  devices = _devices(num_devices)
  info = info or imagenet_info()
  t0 = time.perf_counter()
  setup = train.build(config, info, devices)
  cfg, method = setup.config, setup.method
  state, batch, key = _abstract_inputs(setup)
  build_s = time.perf_counter() - t0

  t0 = time.perf_counter()
  lowered = setup.step_fn.lower(state, batch, key)
  lower_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  if setup.traces != [1]:  # the step was traced once, by the lowering above, and never called
    raise AssertionError(f"unexpected traces of the step: {setup.traces}")

  mem = compiled.memory_analysis()
  arg, out = int(mem.argument_size_in_bytes), int(mem.output_size_in_bytes)
  temp, alias = int(mem.temp_size_in_bytes), int(mem.alias_size_in_bytes)
  code = int(mem.generated_code_size_in_bytes)
  k = cfg.accum_steps
  scan_layers = bool(cfg.model.get("scan_layers", False))
  flops_dev = float(_cost(compiled).get("flops", float("nan"))) * k
  data, fsdp = sharding.mesh_shape(cfg.mesh, num_devices)
  params_dev, params_full = _bytes_per_device(state.params)
  ema_dev, ema_full = _bytes_per_device(state.ema_params) if state.ema_params is not None else (0, 0)
  opt_dev, opt_full = _bytes_per_device(state.opt_state)
  n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))
  from lmim.models import encoder_dims  # pylint: disable=import-outside-toplevel
  out_d = {
      "method": cfg.method, "variant": cfg.model.variant, **{f"encoder_{a}": b for a, b in encoder_dims(cfg.model).items()},
      "image_size": method.train_image_size, "devices": num_devices, "platform": devices[0].platform,
      "global_batch": cfg.batch_size, "accum_steps": k, "per_device_batch": cfg.batch_size // num_devices,
      "mesh_data": data, "mesh_fsdp": fsdp, "fsdp_min_size_mb": cfg.fsdp_min_size_mb,
      "remat": layers.remat_policy(cfg.model.remat), "scan_layers": scan_layers, "dtype": cfg.model.dtype,
      "trainable_params": n_params,
      # Per device, bytes (XLA memory analysis of the compiled per-device program).
      "argument_bytes": arg, "output_bytes": out, "temp_bytes": temp, "alias_bytes": alias,
      "generated_code_bytes": code, "peak_bytes": arg + out + temp - alias,
      # Per device, bytes, from the shard shapes of the train state.
      "params_bytes": params_dev, "ema_params_bytes": ema_dev, "opt_state_bytes": opt_dev,
      "state_bytes": params_dev + ema_dev + opt_dev,
      "state_bytes_unsharded": params_full + ema_full + opt_full,
      "flops_per_device": flops_dev, "flops_total": flops_dev * num_devices,
      "flops_source": "compiled per-device program x devices",
      "build_s": build_s, "lower_s": lower_s, "compile_s": compile_s, "executed": False,
      "caveat": CPU_CAVEAT,
  }
  if global_flops is None:
    global_flops = scan_layers
  if global_flops:
    g = _global_flops(config, info, devices)
    out_d["flops_total_compiled"] = out_d["flops_total"]  # kept for comparison
    out_d["flops_per_device_compiled"] = out_d["flops_per_device"]
    out_d.update(g)
  return out_d


def _global_flops(config, info, devices) -> dict:
  """FLOPs of the whole step (all devices) from the unscanned, unpartitioned HLO: lowering only."""
  from lmim import train  # pylint: disable=import-outside-toplevel
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.model.scan_layers = False
  t0 = time.perf_counter()
  setup = train.build(c, info, devices)
  state, batch, key = _abstract_inputs(setup)
  flops = float(_cost(setup.step_fn.lower(state, batch, key)).get("flops", float("nan")))
  flops *= setup.config.accum_steps
  return {"flops_total": flops, "flops_per_device": flops / len(devices),
          "flops_source": "lowered unscanned global program (scan bodies would count once)",
          "flops_lower_s": time.perf_counter() - t0}


def format_report(r: dict) -> str:
  g = lambda b: f"{b / GIB:8.2f} GiB"
  lines = [
      f"lmim.plan: {r['method']} {r['variant']} (width {r['encoder_width']}, depth {r['encoder_depth']}, "
      f"patch {r['encoder_patch_size']}, {r['image_size']} px, {r['trainable_params'] / 1e6:.1f}M trainable)",
      f"  batch {r['global_batch']} global = {r['per_device_batch']} per device x {r['devices']} "
      f"{r['platform']} devices (accum_steps {r['accum_steps']}); mesh data {r['mesh_data']} x fsdp "
      f"{r['mesh_fsdp']} (params >= {r['fsdp_min_size_mb']} MB sharded)",
      f"  remat {r['remat']}, scan_layers {r['scan_layers']}, dtype {r['dtype']}",
      "Per-device memory (XLA memory analysis of the compiled step):",
      f"  arguments       {g(r['argument_bytes'])}   (train state shard + batch shard + key)",
      f"  outputs         {g(r['output_bytes'])}   (new state + metrics)",
      f"  aliased         {g(r['alias_bytes'])}   (outputs written into the donated state)",
      f"  temporaries     {g(r['temp_bytes'])}   (activations kept for backward, gradients, workspace)",
      f"  generated code  {g(r['generated_code_bytes'])}",
      f"  peak estimate   {g(r['peak_bytes'])}   = arguments + outputs + temporaries - aliased",
      "Train state per device (from the shard shapes):",
      f"  params {g(r['params_bytes'])}, EMA {g(r['ema_params_bytes'])}, optimiser {g(r['opt_state_bytes'])}"
      f" = {r['state_bytes'] / GIB:.2f} GiB ({r['state_bytes_unsharded'] / GIB:.2f} GiB unsharded)",
      f"FLOPs per step: {r['flops_total'] / 1e12:.1f} TFLOP total, {r['flops_per_device'] / 1e12:.2f} "
      f"TFLOP per device ({r['flops_source']}); {r['flops_total'] / r['global_batch'] / 1e9:.1f} GFLOP per image",
      f"Compile {r['compile_s']:.1f} s (lower {r['lower_s']:.1f} s, build {r['build_s']:.1f} s); nothing executed.",
  ]
  for other in r.get("other_dtypes", ()):
    lines.append(f"With model.dtype={other['dtype']}: peak {other['peak_bytes'] / GIB:.2f} GiB "
                 f"(temporaries {other['temp_bytes'] / GIB:.2f} GiB) vs {r['peak_bytes'] / GIB:.2f} GiB "
                 f"({r['temp_bytes'] / GIB:.2f} GiB) in {r['dtype']}; {other['flops_total'] / 1e12:.1f} TFLOP "
                 f"per step vs {r['flops_total'] / 1e12:.1f} (the same matmuls: bfloat16 saves bytes and "
                 f"time, not FLOPs; XLA:CPU converts bfloat16 matmul operands to float32, so on CPU the "
                 f"bytes barely move, where TPU/GPU keep them in bfloat16)")
  lines.append(f"Note: {r['caveat']}.")
  return "\n".join(lines)


def with_other_dtypes(config, num_devices: int, result: dict, **kw) -> dict:
  """`result` plus the same plan in the other compute dtype (float32 <-> bfloat16), beside it."""
  out = dict(result, other_dtypes=[])
  for dtype in ("float32", "bfloat16"):
    if dtype == result["dtype"]:
      continue
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.model.dtype = dtype
    r = plan(c, num_devices, **kw)
    out["other_dtypes"].append({k: r[k] for k in ("dtype", "peak_bytes", "temp_bytes", "argument_bytes",
                                                  "flops_total", "flops_per_device")})
  return out


# The README table ------------------------------------------------------------------------------

# (variant, devices, mesh.fsdp, remat, scan_layers). Slices: a TPU v4-N / v5p-N has N/2 chips
# (one JAX device each), a v5e-N has N chips. 16 devices = v4-32 / v5p-32 / v5e-16; 32 = v4-64 /
# v5p-64 / v5e-32; 64 = v4-128 / v5p-128 / v5e-64; 128 = v4-256 / v5p-256 / v5e-128.
TABLE_ROWS = (
    ("B/16", 16, 1, "none", False), ("B/16", 16, 1, "full", False), ("B/16", 16, 16, "none", False),
    ("B/16", 32, 1, "none", False), ("B/16", 64, 1, "none", False), ("B/16", 64, 8, "none", False),
    ("B/16", 128, 1, "none", False), ("B/16", 16, 1, "none", True), ("B/16", 16, 1, "full", True),
    ("L/16", 16, 1, "none", True), ("L/16", 16, 1, "full", True), ("L/16", 16, 16, "full", True),
    ("L/16", 32, 8, "none", True), ("L/16", 64, 1, "none", True), ("L/16", 64, 8, "none", True),
    ("L/16", 128, 8, "none", True),
    ("H/14", 32, 1, "full", True), ("H/14", 32, 8, "full", True), ("H/14", 64, 8, "none", True),
    ("H/14", 64, 8, "full", True), ("H/14", 128, 8, "none", True), ("H/14", 128, 8, "full", True),
)
TABLE_CONFIG = "configs/lmim_vitb16_in1k.py"


def row_command(variant, devices, fsdp, remat, scan) -> str:
  cmd = f"python -m lmim.plan --config {TABLE_CONFIG}:variant={variant} --devices {devices}"
  if fsdp != 1:
    cmd += f" --config.mesh.fsdp={fsdp}"
  if remat != "none":
    cmd += f" --config.model.remat={remat}"
  if scan:
    cmd += " --config.model.scan_layers=True"
  return cmd


def table_header() -> str:
  return ("| encoder | devices | mesh data×fsdp | remat | scan | batch/device | peak GiB/device | "
          "temp GiB/device | params+EMA+opt GiB/device | TFLOP/step (global) | compile s |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")


def table_row(r: dict) -> str:
  return (f"| ViT-{r['variant']} | {r['devices']} | {r['mesh_data']}×{r['mesh_fsdp']} | {r['remat']} | "
          f"{'yes' if r['scan_layers'] else 'no'} | {r['per_device_batch']} | {r['peak_bytes'] / GIB:.1f} | "
          f"{r['temp_bytes'] / GIB:.1f} | {r['state_bytes'] / GIB:.2f} | {r['flops_total'] / 1e12:.0f} | "
          f"{r['compile_s']:.0f} |")


def table(rows=TABLE_ROWS, out=sys.stdout) -> list[dict]:
  """Each row in its own process (each needs its own device count); prints Markdown as it goes."""
  import json  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  print(table_header(), file=out, flush=True)
  results = []
  for variant, devices, fsdp, remat, scan in rows:
    cmd = row_command(variant, devices, fsdp, remat, scan)
    argv = [sys.executable, "-m", "lmim.plan"] + cmd.split()[3:] + ["--json"]
    p = subprocess.run(argv, capture_output=True, text=True, check=False)
    if p.returncode:
      print(f"| ViT-{variant} | {devices} | fsdp {fsdp} | {remat} | {scan} | failed: "
            f"{(p.stderr.strip().splitlines() or ['?'])[-1]} |", file=out, flush=True)
      continue
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r["command"] = cmd
    results.append(r)
    print(table_row(r), file=out, flush=True)
  return results


# CLI -------------------------------------------------------------------------------------------

def _ensure_devices(n: int):
  """N virtual CPU devices: set before the backend starts, else re-execute with the env vars."""
  from jax._src import xla_bridge  # pylint: disable=import-outside-toplevel
  if not xla_bridge.backends_are_initialized():
    jax.config.update("jax_platforms", "cpu")
    jax.config.update("jax_num_cpu_devices", n)
  if jax.devices()[0].platform == "cpu" and len(jax.devices()) == n:
    return
  if os.environ.get("LMIM_PLAN_REEXEC"):
    raise PlanError(f"could not get {n} CPU devices (have {len(jax.devices())})")
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(n), LMIM_PLAN_REEXEC="1")
  os.execve(sys.executable, [sys.executable, "-m", "lmim.plan"] + sys.argv[1:], env)


def main():
  """The `lmim-plan` command (python -m lmim.plan)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from lmim import cli  # pylint: disable=import-outside-toplevel

  flags.DEFINE_integer("devices", None, "Number of devices (virtual CPU devices) to compile for.")
  flags.DEFINE_bool("json", False, "Print the result as one line of JSON.")
  flags.DEFINE_bool("global_flops", None, "Also count FLOPs on the lowered, unscanned global program "
                    "(default: only when model.scan_layers makes XLA's compiled count too low).")
  flags.DEFINE_bool("table", False, "Compute the README memory table (ViT-B/L/H on common slices).")
  flags.DEFINE_bool("other_dtype", True, "Also plan the step in the other compute dtype (float32 <-> "
                    "bfloat16) and print its memory and FLOPs beside.")

  def run(config, _):
    f = flags.FLAGS
    if f.table:
      table()
      return
    if config is None or f.devices is None:
      cli.fail("--config and --devices are required (or --table)")

    def go():
      if f.devices < 1:
        raise PlanError(f"--devices={f.devices} is invalid: must be >= 1")
      sharding.mesh_shape(config.mesh, f.devices)  # a bad mesh fails before any re-exec
      _ensure_devices(f.devices)
      r = plan(config, f.devices, global_flops=f.global_flops)
      return with_other_dtypes(config, f.devices, r, global_flops=f.global_flops) if f.other_dtype else r
    result = cli.guard(go)
    if f.json:
      import json  # pylint: disable=import-outside-toplevel
      print(json.dumps(result))
    else:
      print(format_report(result))
  cli.run_app(run, config="optional")


if __name__ == "__main__":
  main()
