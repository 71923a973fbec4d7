"""Train-step benchmark on synthetic data, measured against the machine it runs on.

    python -m lmim.benchmark --config configs/lmim_vitb16_in1k.py:variant=Ti/16 \
        --config.batch_size=8 --config.sim_reg.group_size=8 --steps 10
    python -m lmim.benchmark --config configs/pcae_vitb16_in1k.py:variant=Ti/16 --config.batch_size=8

The step is the trainer's own (same jit, shardings and donation); images are random, so no
dataset is needed. FLOPs are XLA's count for the compiled step (per optimiser step, all devices;
with accum_steps > 1 XLA counts the scanned micro-step body once, so the figure is scaled by
accum_steps).

Absolute times belong to one machine at one moment (a busy neighbour doubles them), so the
benchmark also measures, in the same process and window, what this machine's matmuls reach: a
jitted chain of large square matmuls in the step's dtype, before and after the timed steps. The
report's headline is the ratio achieved FLOP/s ÷ that peak, which carries across machines of one
kind. A `jax.profiler` trace of a few more steps gives the time of each phase of the step (target
encoder, online encoder and projector forward/backward, decoder, loss, EMA, optimiser: the
`jax.named_scope` names of lmim.methods.base.PHASES, read back from the compiled program's op
metadata). Speed targets belong here, never in timed tests.

`--variant 'field=value;...'` and/or `--xla_options 'xla_...=value;...'` build a second step (config
overrides, XLA compiler options) that alternates with the first step by step on the same images;
the report gives the median of the step-by-step time ratios, which a busy machine's drift moves
far less than it moves a median of separate runs:

    python -m lmim.benchmark --config ... --variant 'model.attention=xla' --nophases
    python -m lmim.benchmark --config ... --xla_options 'xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'
"""
import ast
import collections
import gzip
import json
import os
import pathlib
import platform
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmim import config_lib, data, train
from lmim.errors import FlagError
from lmim.methods.base import PHASES
from lmim.models import DTYPES

PEAK_SIZE = 1024   # square matmuls of this side reach the CPU's peak here (512 does not)
PEAK_CHAIN = 8     # matmuls per call: one dispatch is amortised over ~17 GFLOP


def machine() -> str:
  """The machine in words: CPU model and cores, or the accelerator kind and count."""
  dev = jax.devices()
  if dev[0].platform != "cpu":
    return f"{len(dev)} x {dev[0].device_kind}"
  model = platform.processor() or "cpu"
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        model = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return f"{model}, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()} cores"


def matmul_peak(dtype: str = "float32", *, size: int = PEAK_SIZE, chain: int = PEAK_CHAIN, reps: int = 5,
                devices=None) -> list[float]:
  """FLOP/s of `reps` calls of a jitted chain of `chain` (size × size) matmuls on every device
  (one chain per device, data-parallel): what this machine's matmuls reach, in `dtype`."""
  devices = devices or jax.devices()
  mesh = jax.sharding.Mesh(np.asarray(devices), ("d",))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("d"))
  k1, k2 = jax.random.split(jax.random.key(0))
  n = len(devices)
  x = jax.device_put(jax.random.normal(k1, (n, size, size), jnp.float32).astype(DTYPES[dtype]), shard)
  # Scaled so the chain neither overflows nor underflows: each product keeps x's magnitude.
  w = jax.device_put((jax.random.normal(k2, (n, size, size), jnp.float32) / size ** 0.5).astype(DTYPES[dtype]), shard)

  @jax.jit
  def run(x, w):
    for _ in range(chain):
      x = jnp.einsum("dij,djk->dik", x, w)
    return x

  jax.block_until_ready(run(x, w))
  out = []
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(run(x, w))
    out.append(2 * size ** 3 * chain * n / (time.perf_counter() - t0))
  return out


###################################################################################################
# Phases from a profiler trace.
###################################################################################################

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\w+)\[([\d,]*)\]\S* (.*)$|^\s*(?:ROOT )?%([\w.\-]+) = (.*)$")
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_DOT = re.compile(r"^dot\(%([\w.\-]+), %[\w.\-]+\).*lhs_contracting_dims=\{([\d,]*)\}")


def parse_hlo(hlo_text: str) -> dict[str, tuple[list[str], float]]:
  """Executed instruction name -> (the op_name metadata of it and of the computations it `calls`, the matmul
  FLOPs in them), from a compiled module's text. The CPU runtime names each executed thunk after
  its instruction, so this maps a trace event back to the JAX code it came from and its work."""
  comps, current = {}, None
  for line in hlo_text.splitlines():
    if line.endswith("{") and not line.startswith(" ") and "=" not in line.split("(")[0]:
      current = line.split("(")[0].replace("ENTRY", "").strip().lstrip("%")
      comps[current] = []
    elif current is not None and (m := _INSTR.match(line)):
      if m[1]:   # an array-shaped instruction: name, dtype, dims, the rest
        dims = [int(d) for d in m[3].split(",") if d]
        comps[current].append((m[1], dims, m[4]))
      else:      # tuple-shaped and the like
        comps[current].append((m[5], None, m[6]))

  def summary(instrs, shapes):
    names, flops = [], 0.0
    for _, dims, rest in instrs:
      names += _OP_NAME.findall(rest)
      d = _DOT.match(rest)
      if d and dims is not None and shapes.get(d[1]) is not None:
        contracted = np.prod([shapes[d[1]][int(i)] for i in d[2].split(",") if i] or [1])
        flops += 2.0 * float(np.prod(dims or [1])) * float(contracted)
    return names, flops
  shapes = {c: {name: dims for name, dims, _ in ins} for c, ins in comps.items()}
  by_comp = {c: summary(ins, shapes[c]) for c, ins in comps.items()}
  # Fusion bodies (`calls=`) and reducers (`to_apply=`) run inside their caller's thunk; every
  # other computation's instructions (the entry, loop bodies) are thunks of their own.
  inner = {c for ins in comps.values() for _, _, rest in ins for c in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", rest)}
  out = {}
  for comp, instrs in comps.items():
    if comp in inner:
      continue
    for instr in instrs:
      names, flops = summary([instr], shapes[comp])
      for c in _CALLS.findall(instr[2]):
        names, flops = names + by_comp.get(c, ([], 0.0))[0], flops + by_comp.get(c, ([], 0.0))[1]
      out[instr[0]] = (names, flops)
  return out


def phase_of(op_names: list[str]) -> str:
  """The step phase most of a thunk's ops belong to: a PHASES scope, '(forward|backward)' for
  the trained parts, the projector split from its encoder; 'other' when none (views, gathers,
  random draws, gradient accumulation)."""
  votes = collections.Counter()
  for op in op_names:
    scope = next((p for p in PHASES if re.search(rf"\b{p}\b", op)), None)
    if scope is None:
      votes["other"] += 1
      continue
    if scope == "online_encoder" and "/head/" in op:
      scope = "projector"
    if scope in ("online_encoder", "projector", "decoder", "loss"):
      scope += " backward" if "transpose(" in op else " forward"
    votes[scope] += 1
  return votes.most_common(1)[0][0] if votes else "other"


def profile_phases(run_step, hlo_text: str, steps: int = 3) -> dict[str, dict]:
  """Per phase: seconds per step, matmul FLOPs per step and the seconds of the thunks that hold a
  matmul (a matmul fusion also does the elementwise work fused around it). `steps` calls of `run_step()` run
  under jax.profiler; every executed thunk's duration is summed by the phase of its ops. Thunks
  may run concurrently on several threads, so the phases add up to the busy time, which can
  exceed the wall time."""
  ops = parse_hlo(hlo_text)
  with tempfile.TemporaryDirectory() as tmp:
    with jax.profiler.trace(tmp):
      for _ in range(steps):
        run_step()
    traces = sorted(pathlib.Path(tmp).rglob("*.trace.json.gz"))
    if not traces:
      return {}
    with gzip.open(traces[-1], "rt") as f:
      events = json.load(f)["traceEvents"]
  seconds, flops, matmul_seconds = collections.Counter(), collections.Counter(), collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in ops:
      names, f = ops[e["name"]]
      phase = phase_of(names)
      seconds[phase] += e["dur"] * 1e-6 / steps
      flops[phase] += f / steps
      matmul_seconds[phase] += e["dur"] * 1e-6 / steps if f > 0 else 0.0
  return {p: {"seconds": seconds[p], "matmul_flops": flops[p], "matmul_seconds": matmul_seconds[p]}
          for p in seconds}


###################################################################################################
# What the step's own matmuls reach alone.
###################################################################################################

_ARRAY = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = \w+\[([\d,]*)\](?:\{([\d,]*)[^}]*\})? ")
_DOT_CALL = re.compile(r"= \w+\[([\d,]*)\]\S* dot\(%([\w.\-]+), %([\w.\-]+)\)(.*)$")


def _dims_attr(rest: str, name: str) -> tuple[int, ...]:
  m = re.search(name + r"=\{([\d,]*)\}", rest)
  return tuple(int(i) for i in m[1].split(",") if i) if m else ()


def step_dots(hlo_text: str) -> collections.Counter:
  """Every matmul a compiled step executes, as (lhs shape, rhs shape, dimension numbers) in the
  operands' physical (major-to-minor) order — a transposed operand layout becomes a transposed
  row-major array — with how many times it runs per step (loop bodies counted once)."""
  arrays, dots = {}, collections.Counter()
  for line in hlo_text.splitlines():
    m = _ARRAY.match(line)
    if m:
      dims = tuple(int(d) for d in m[2].split(",") if d)
      minor_to_major = tuple(int(d) for d in m[3].split(",") if d) if m[3] else tuple(reversed(range(len(dims))))
      arrays[m[1]] = (dims, tuple(reversed(minor_to_major)))
    d = _DOT_CALL.search(line)
    if d and d[2] in arrays and d[3] in arrays:
      (ld, lo), (rd, ro) = arrays[d[2]], arrays[d[3]]
      rest = d[4]
      phys = lambda order, ids: tuple(order.index(i) for i in ids)
      dots[(tuple(ld[i] for i in lo), tuple(rd[i] for i in ro),
            phys(lo, _dims_attr(rest, "lhs_contracting_dims")), phys(ro, _dims_attr(rest, "rhs_contracting_dims")),
            phys(lo, _dims_attr(rest, "lhs_batch_dims")), phys(ro, _dims_attr(rest, "rhs_batch_dims")))] += 1
  return dots


def dot_flops(key) -> float:
  lhs, rhs, lc, rc, lb, rb = key
  out = np.prod([lhs[i] for i in range(len(lhs)) if i not in lc]) * np.prod(
      [rhs[i] for i in range(len(rhs)) if i not in rc + rb])
  return 2.0 * float(out) * float(np.prod([lhs[i] for i in lc] or [1]))


def time_dot(key, dtype: str = "float32", reps: int = 5) -> float:
  """Seconds of one such matmul alone (jitted, best of `reps` after a warm-up call)."""
  lhs, rhs, lc, rc, lb, rb = key
  k1, k2 = jax.random.split(jax.random.key(1))
  a = jax.random.normal(k1, lhs, jnp.float32).astype(DTYPES[dtype])
  b = jax.random.normal(k2, rhs, jnp.float32).astype(DTYPES[dtype])
  fn = jax.jit(lambda a, b: jax.lax.dot_general(a, b, ((lc, rc), (lb, rb))))
  jax.block_until_ready(fn(a, b))
  best = float("inf")
  for _ in range(reps):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(a, b))
    best = min(best, time.perf_counter() - t0)
  return best


def dots_alone(hlo_text: str, dtype: str = "float32", passes: int = 3) -> dict:
  """The step's matmuls, each timed alone with its shapes and operand layout: their FLOPs and the
  seconds they need at best. Their rate bounds what the step's matmuls can reach on this machine
  (small or thin matmuls run below the square-matmul peak whatever the code around them). One
  shape timed once moved by up to 1.8x between runs on a quiet 2-core machine, so every shape is
  timed in `passes` passes over the whole list and keeps its best."""
  dots = step_dots(hlo_text)
  best = {k: float("inf") for k in dots}
  for _ in range(passes):
    for k in dots:
      best[k] = min(best[k], time_dot(k, dtype))
  flops = sum(dot_flops(k) * n for k, n in dots.items())
  seconds = sum(best[k] * n for k, n in dots.items())
  shapes = sorted(({"lhs": k[0], "rhs": k[1], "contracting": (k[2], k[3]), "batch": (k[4], k[5]), "count": n,
                    "seconds": best[k] * n, "flops_per_s": dot_flops(k) / best[k]} for k, n in dots.items()),
                  key=lambda d: -d["seconds"])
  return {"matmul_flops": flops, "seconds": seconds, "distinct": len(dots), "count": sum(dots.values()),
          "shapes": shapes}


###################################################################################################
# A variant of the step, alternated with it: config overrides and/or XLA compiler options.
###################################################################################################


def parse_pairs(text: str, flag: str) -> dict:
  """'a=1;b.c=x' -> {'a': 1, 'b.c': 'x'} (values as Python literals where they parse, else strings)."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(";"))):
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
      raise FlagError(flag, text, "';'-separated name=value pairs, e.g. 'model.attention=xla'")
    try:
      out[key.strip()] = ast.literal_eval(value.strip())
    except (ValueError, SyntaxError):
      out[key.strip()] = value.strip()
  return out


def variant_config(config, overrides: dict):
  """A copy of `config` with dotted `overrides`, each naming an existing field of a fitting type."""
  out = config.copy_and_resolve_references()
  for key, value in overrides.items():
    try:
      *path, leaf = key.split(".")
      node = out
      for p in path:
        node = node[p]
      if leaf not in node:   # an unlocked config would take a new field silently
        raise KeyError(f"no field {leaf!r} in {'.'.join(path) or 'the config'}")
      config_lib.apply_dotted(out, {key: value})
    except (KeyError, AttributeError, TypeError) as e:
      why = str(e).split(" Other fields present")[0].strip("'\"")
      raise FlagError("variant", f"{key}={value}", f"each name an existing config field, each value of its type ({why})") from None
  return out


def _xla_options(text: str) -> dict:
  """--xla_options 'xla_cpu_x=v;...' as compiler options (DebugOptions fields, checked by XLA at compile)."""
  opts = {k: {"true": True, "false": False}.get(str(v).lower(), v if isinstance(v, (bool, int, float)) else str(v))
          for k, v in parse_pairs(text, "xla_options").items()}
  for k in opts:
    if not k.startswith("xla_"):
      raise FlagError("xla_options", k, "XLA DebugOptions field names (they start with 'xla_')")
  if opts:   # XLA checks names and values: compile a scalar with them before the step is built
    try:
      jax.jit(lambda x: x + 1).lower(1.0).compile(compiler_options=opts)
    except Exception as e:  # pylint: disable=broad-except
      raise FlagError("xla_options", text, f"options XLA accepts ({str(e).splitlines()[0]})") from None
  return opts


def paired_ratios(a: list[float], b: list[float]) -> dict:
  """b ÷ a step by step (the two were run back to back, in alternating order): the median and
  quartiles of the ratios. Pairing cancels the drift of a shared machine that moves a median of
  separate runs by more than the effects measured here."""
  r = np.asarray(b) / np.asarray(a)
  return {"median": float(np.median(r)), "quartiles": (float(np.percentile(r, 25)), float(np.percentile(r, 75))),
          "pairs": len(r)}


###################################################################################################
# The benchmark.
###################################################################################################


def benchmark(config, *, steps: int = 10, warmup: int = 2, devices=None, channels: int = 3, peak: bool = True,
              phases: bool = True, dots: bool = False, official: str = "", variant: str = "",
              xla_options: str = "") -> dict:
  info = data.DataInfo(name="synthetic", num_examples=1_281_167, num_classes=1000, channels=channels,
                       mean=(0.5,) * channels, std=(0.25,) * channels)
  # The variant (if any) is checked before anything is built or compiled.
  var_overrides = parse_pairs(variant, "variant")
  var_options = _xla_options(xla_options)
  var_config = variant_config(config, var_overrides) if (var_overrides or var_options) else None
  setup = train.build(config, info, devices)
  cfg, method = setup.config, setup.method
  size, k = method.train_image_size, cfg.accum_steps
  reference = None
  if official:   # checked and built before anything is compiled
    from lmim import official_step  # pylint: disable=import-outside-toplevel
    hp = official_step.official_hparams(cfg, method)
    reference = official_step.OfficialStep(official, hp, lr=float(cfg.optim.lr), weight_decay=float(cfg.optim.weight_decay),
                                           momentum=float(cfg.ema.momentum), seed=cfg.seed)
  rng = np.random.default_rng(0)
  shape = (k, cfg.batch_size // k // jax.process_count(), size, size, channels)
  local = {key: rng.standard_normal(shape, dtype=np.float32) for key in setup.batch_shardings}
  state = setup.init_fn(setup.init_key)
  batch = train.device_batch(setup, local)
  t0 = time.perf_counter()
  compiled = setup.step_fn.lower(state, batch, setup.step_key).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) * (k if k > 1 else 1)
  var = None
  if var_config is not None:   # its own setup, state and compile; the same images
    vs = train.build(var_config, info, devices)
    vbatch = train.device_batch(vs, local if set(vs.batch_shardings) <= set(local) else
                                {key: rng.standard_normal(shape, dtype=np.float32) for key in vs.batch_shardings})
    vstate = vs.init_fn(vs.init_key)
    vcompiled = vs.step_fn.lower(vstate, vbatch, vs.step_key).compile(compiler_options=var_options or None)
    vcost = vcompiled.cost_analysis()
    vcost = vcost[0] if isinstance(vcost, (list, tuple)) else vcost
    var = {"compiled": vcompiled, "state": vstate, "batch": vbatch, "key": vs.step_key, "times": [],
           "flops": float(vcost.get("flops", float("nan"))) * max(var_config.accum_steps, 1)}
  step_devices = list(setup.mesh.devices.flat)
  dtype = cfg.model.get("dtype", "float32")
  peaks = matmul_peak(dtype, devices=step_devices) if peak else []  # before the steps ...
  times, ref_times, ref_losses = [], [], []
  if reference is not None:   # the same images, NCHW, on the host: the official loop's input
    ref_images = np.ascontiguousarray(next(iter(local.values()))[0].transpose(0, 3, 1, 2))
  def variant_step() -> float:
    t0 = time.perf_counter()
    var["state"], _ = var["compiled"](var["state"], var["batch"], var["key"])
    jax.block_until_ready(var["state"])
    return time.perf_counter() - t0

  for i in range(warmup + steps):   # with a reference or a variant: they alternate with lmim's step
    if var is not None and i % 2:     # the variant first on odd steps: neither always follows the other
      var_t = variant_step()
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, setup.step_key)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
    if var is not None and not i % 2:
      var_t = variant_step()
    if var is not None and i >= warmup:
      var["times"].append(var_t)
    if reference is not None:
      t0 = time.perf_counter()
      ref_losses.append(reference.step(ref_images))
      if i >= warmup:
        ref_times.append(time.perf_counter() - t0)
  if dots and len(step_devices) == 1:
    out_dots = dots_alone(compiled.as_text(), dtype)
  if peak:
    peaks += matmul_peak(dtype, devices=step_devices)                # ... and after: one window
  med = statistics.median(times)
  out = {"compile_s": compile_s, "median_step_s": med, "step_s_range": (min(times), max(times)),
         "images_per_s": cfg.batch_size / med, "flops_per_step": flops, "flops_per_s": flops / med,
         "steps": steps, "batch_size": cfg.batch_size, "devices": len(step_devices), "image_size": size,
         "dtype": dtype, "loss": float(metrics["loss"]), "machine": machine()}
  if peak:
    out.update(peak_flops_per_s=statistics.median(peaks), peak_range=(min(peaks), max(peaks)),
               peak_best_flops_per_s=max(peaks),
               peak_fraction=(flops / med) / statistics.median(peaks),
               # Best against best: a neighbour only ever slows a sample down, so the fastest step
               # and the fastest peak sample are what this machine does, and their ratio moves
               # least when the machine is shared (the medians' ratio moved 0.54 -> 0.76 there).
               best_fraction=(flops / min(times)) / max(peaks))
  if dots and len(step_devices) == 1:
    out["dots_alone"] = out_dots
  if var is not None:
    vmed = statistics.median(var["times"])
    out["variant"] = {"overrides": var_overrides, "xla_options": var_options, "median_step_s": vmed,
                      "step_s_range": (min(var["times"]), max(var["times"])), "flops_per_step": var["flops"],
                      "time_ratio": paired_ratios(times, var["times"])}
    if peak:
      out["variant"]["peak_fraction"] = (var["flops"] / vmed) / statistics.median(peaks)
    del var
  if reference is not None:
    ref_med = statistics.median(ref_times)
    from clu import parameter_overview  # pylint: disable=import-outside-toplevel
    lmim_params = parameter_overview.count_parameters(state.params)
    out["official"] = {"median_step_s": ref_med, "step_s_range": (min(ref_times), max(ref_times)),
                       "speedup": ref_med / med, "losses": ref_losses, "torch": reference.torch.__version__,
                       "threads": reference.torch.get_num_threads(),
                       "trainable_parameters": reference.trainable_parameters(), "lmim_parameters": lmim_params}
    if peak:
      out["official"]["peak_fraction"] = (flops / ref_med) / statistics.median(peaks)
  if phases:
    holder = [state]

    def run_step():
      holder[0], m = compiled(holder[0], batch, setup.step_key)
      jax.block_until_ready((holder[0], m))
    out["phases"] = profile_phases(run_step, compiled.as_text())
  return out


def format_report(r: dict) -> str:
  lines = [f"{r['machine']}: batch {r['batch_size']} at {r['image_size']} px, {r['dtype']}, "
           f"{r['devices']} device(s)"]
  if "peak_fraction" in r:
    lines.append(f"achieved/peak {r['peak_fraction']:.2f}: the step at {r['flops_per_s'] / 1e9:.1f} GFLOP/s, "
                 f"this machine's {r['dtype']} matmuls at {r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s "
                 f"(range {r['peak_range'][0] / 1e9:.1f}-{r['peak_range'][1] / 1e9:.1f}, same window); "
                 f"best step / best peak sample {r['best_fraction']:.2f}")
  lines.append(f"median step {r['median_step_s'] * 1e3:.1f} ms (range {r['step_s_range'][0] * 1e3:.1f}-"
               f"{r['step_s_range'][1] * 1e3:.1f}) | {r['images_per_s']:.2f} images/s | "
               f"{r['flops_per_step'] / 1e9:.1f} GFLOP/step | compile {r['compile_s']:.1f} s")
  if "official" in r:
    o = r["official"]
    lines.append(f"official code (torch {o['torch']}, {o['threads']} threads), alternating with lmim: median step "
                 f"{o['median_step_s'] * 1e3:.1f} ms (range {o['step_s_range'][0] * 1e3:.1f}-"
                 f"{o['step_s_range'][1] * 1e3:.1f}); lmim speed-up {o['speedup']:.2f}x"
                 + (f"; official at {o['peak_fraction']:.2f} of the peak (lmim's FLOP count)" if "peak_fraction" in o else ""))
    same = o["trainable_parameters"] == o["lmim_parameters"]
    lines.append(f"  same network: {o['trainable_parameters']:,} trainable parameters official, "
                 f"{o['lmim_parameters']:,} lmim ({'the same' if same else 'DIFFERENT: not the same geometry'}); "
                 f"official loss {o['losses'][0]:.4f} -> {o['losses'][-1]:.4f}, lmim's last {r['loss']:.4f}")
  if "variant" in r:
    v = r["variant"]
    what = "; ".join([f"{k}={val}" for k, val in v["overrides"].items()] +
                     [f"XLA {k}={val}" for k, val in v["xla_options"].items()])
    t = v["time_ratio"]
    lines.append(f"variant ({what}), alternating with the step: median step {v['median_step_s'] * 1e3:.1f} ms (range "
                 f"{v['step_s_range'][0] * 1e3:.1f}-{v['step_s_range'][1] * 1e3:.1f}), {v['flops_per_step'] / 1e9:.1f} GFLOP/step"
                 + (f", achieved/peak {v['peak_fraction']:.2f}" if "peak_fraction" in v else ""))
    lines.append(f"  variant time / step time, step by step: median {t['median']:.3f} (quartiles {t['quartiles'][0]:.3f}-"
                 f"{t['quartiles'][1]:.3f}, {t['pairs']} pairs): the variant is {1 / t['median']:.2f}x the step's speed")
  if "dots_alone" in r:
    d = r["dots_alone"]
    line = (f"matmuls alone: the step's {d['count']} matmuls ({d['distinct']} distinct), each timed alone with its "
            f"shapes and operand layouts, need {d['seconds'] * 1e3:.1f} ms for {d['matmul_flops'] / 1e9:.1f} GFLOP")
    line += f", {100 * d['seconds'] / r['median_step_s']:.0f} % of the step's time"
    if "peak_best_flops_per_s" in r:   # best against best: both are the fastest of their repeats
      line += (f"; alone they reach {d['matmul_flops'] / d['seconds'] / r['peak_best_flops_per_s']:.2f} of the "
               f"best peak sample, so with everything else free the step would be at "
               f"{r['flops_per_step'] / d['seconds'] / r['peak_best_flops_per_s']:.2f}")
    lines.append(line)
    for d in r["dots_alone"]["shapes"][:8]:   # where the matmul time goes, largest first
      rate = d["flops_per_s"] / r["peak_best_flops_per_s"] if "peak_best_flops_per_s" in r else float("nan")
      lines.append(f"    {d['seconds'] * 1e3:7.1f} ms  x{d['count']:<3d} {d['flops_per_s'] / 1e9:6.1f} GFLOP/s "
                   f"({rate:.2f} of peak)  lhs {d['lhs']} rhs {d['rhs']} contracting {d['contracting']} "
                   f"batch {d['batch']}")
  ph = r.get("phases") or {}
  if ph and "dots_alone" in r:
    in_step = sum(p.get("matmul_seconds", 0.0) for p in ph.values())
    busy = sum(p["seconds"] for p in ph.values())
    lines.append(f"  in the step (profiler, summed over threads): the thunks that hold a matmul take {in_step * 1e3:.1f} ms "
                 f"({in_step / r['dots_alone']['seconds']:.2f}x the matmuls alone), everything else "
                 f"{(busy - in_step) * 1e3:.1f} ms")
  if ph:
    busy = sum(p["seconds"] for p in ph.values())
    peak = r.get("peak_flops_per_s")
    lines.append(f"phases (profiler; busy {busy * 1e3:.1f} ms/step summed over threads; matmul GFLOP from "
                 "the compiled program" + ("; /peak = the phase's matmul FLOP/s over the peak" if peak else "") + "):")
    for name, p in sorted(ph.items(), key=lambda kv: -kv[1]["seconds"]):
      s, f = p["seconds"], p["matmul_flops"]
      rate = f"{f / s / peak:5.2f}" if peak and s > 0 and f > 0 else "    -"
      lines.append(f"  {name:<26} {s * 1e3:9.1f} ms {100 * s / busy:5.1f} % {f / 1e9:8.2f} GFLOP  /peak {rate}")
  return "\n".join(lines)


def main():
  """The `lmim-benchmark` command (python -m lmim.benchmark)."""
  from lmim import cli  # pylint: disable=import-outside-toplevel
  cli.main_benchmark(benchmark, format_report, {
      "steps": (10, "Timed steps (after 2 warmup steps)."),
      "phases": (True, "Break the step down by phase from a jax.profiler trace."),
      "dots": (False, "Also time each of the step's matmuls alone (one device): the rate its shapes allow."),
      "official": ("", "Path to a checkout of the official Latent MIM code (github.com/yibingwei-1/LatentMIM): "
                   "its training step, same geometry, alternates with lmim's (needs torch and timm)."),
      "variant": ("", "Config overrides 'field=value;...' for a second step that alternates with the first, "
                  "step by step (e.g. 'model.attention=xla'); reports the paired time ratio."),
      "xla_options": ("", "XLA compiler options 'xla_...=value;...' for that second step (alone, they compare "
                      "the same step compiled two ways).")})


if __name__ == "__main__":
  main()
