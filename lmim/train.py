"""Pretraining: one trainer for every method, reading top to bottom (big_vision's order).

    python -m lmim.train --config configs/lmim_demo.py --workdir workdirs/demo
    python -m lmim.train --config configs/lmim_vitb16_in1k.py --workdir gs://bucket/run \
        --config.input.data_dir=gs://bucket/tfds

Sections: config checks (before anything compiles) · mesh · input · model and optimiser
(shapes only) · shard and initialise · the update step · checkpoint resume · evals and the loop.
Resuming is automatic: if the workdir holds a checkpoint of the same config, training continues
from its latest step, the data stream from the saved global example index.
"""
import dataclasses
import json
import logging
import os
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmim import config_lib, data, distributed, evaluators, methods, optim, sharding, views
from lmim.checkpoint import Checkpointer, abstract_like
from lmim.checkpoint import write_failure_reason
from lmim.errors import CheckpointError, CheckpointReadError, CheckpointWriteError, NonFiniteError, WorkdirError
from lmim.metrics_writer import (MetricWriter, console_logging, file_logging, format_line, read_jsonl,
                                 stop_file_logging)
from lmim.train_state import TrainState

log = logging.getLogger("lmim")


@dataclasses.dataclass
class Setup:
  """Everything built from a config before the first step runs."""
  config: object            # resolved: durations in steps, peak lr filled in
  method: object
  mesh: jax.sharding.Mesh
  source: object
  info: object
  tx: optax.GradientTransformation
  state_shardings: TrainState
  batch_shardings: dict
  init_fn: object           # jitted: key -> TrainState, laid out on the mesh
  step_fn: object           # jitted, state donated: (state, batch, key) -> (state, metrics)
  init_key: jax.Array
  step_key: jax.Array
  traces: list              # one entry per trace of the step (a recompilation check)


def check(config, num_devices: int) -> None:
  """Every one-line config error (the run's fields, then the method's), before anything is
  opened, created or compiled."""
  config_lib.validate_run(config, num_devices)
  methods.validate(config)


def prepare(config, devices=None) -> Setup:
  """Check the config, open the training data and build everything for `config`."""
  devices = list(devices if devices is not None else jax.devices())
  check(config, len(devices))
  source, info = data.open_source(config.input.data, config.input.split, config.input.data_dir,
                                  mean=config.input.mean, std=config.input.std,
                                  classes=config.input.get("classes"))
  return _build(config, info, devices, source)


def build(config, info, devices=None, source=None) -> Setup:
  """Everything but the data: `info` (channels, num_examples) fixes the shapes and the epochs."""
  devices = list(devices if devices is not None else jax.devices())
  check(config, len(devices))
  return _build(config, info, devices, source)


def _build(config, info, devices, source) -> Setup:
  """`build` once the config has passed `check`."""
  cfg = config_lib.resolve(config, info.num_examples)
  method = methods.build(cfg, info.channels, validated=True)

  ########################################################################################
  # Mesh.
  ########################################################################################
  mesh = sharding.make_mesh(cfg.mesh, devices)

  ########################################################################################
  # Model and optimiser: shapes only (jax.eval_shape), nothing materialised yet.
  ########################################################################################
  lr_fn = optim.lr_schedule(cfg.optim, peak_lr=cfg.optim.lr, total_steps=cfg.total_steps,
                            warmup_steps=cfg.warmup_steps)
  tx = optim.make(cfg.optim, lr_fn, total_steps=cfg.total_steps, decay_rule=method.decay_rule)
  init_key, step_key = jax.random.split(jax.random.key(cfg.seed))
  repl = sharding.replicated(mesh)
  # Keys live on the mesh from the start, so the loop never moves them (transfer guard).
  init_key, step_key = jax.jit(lambda a, b: (a, b), out_shardings=(repl, repl))(init_key, step_key)

  def init(key):
    params, ema_params = method.init(key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=ema_params,
                      opt_state=tx.init(params))

  abstract = jax.eval_shape(init, init_key)

  ########################################################################################
  # Shard and initialise: the state is created directly in its sharded layout.
  ########################################################################################
  state_sh = sharding.tree_shardings(abstract, mesh, cfg.fsdp_min_size_mb)
  init_fn = jax.jit(init, out_shardings=state_sh)
  # One image array per view of each example.
  batch_sh = {k: sharding.batch_sharding(mesh, batch_axis=1) for k in data.image_keys(method.num_views)}

  ########################################################################################
  # The update step: one optimiser step over `accum_steps` micro-batches.
  ########################################################################################
  micro = cfg.batch_size // cfg.accum_steps
  wd_fn = optim.wd_schedule(cfg.optim, total_steps=cfg.total_steps)
  traces = []

  def update(state, batch, key):
    traces.append(1)  # runs at trace time only
    step = state.step
    key = jax.random.fold_in(key, step)
    # Targets first (docs/latent_mim.md §7): one EMA step per optimiser step, from the previous
    # online weights.
    with jax.named_scope("ema_update"):  # phase names: lmim.methods.base.PHASES
      ema = None if state.ema_params is None else method.update_targets(state.ema_params, state.params, step)
    grad_fn = jax.value_and_grad(method.loss, has_aux=True)

    def micro_step(grads, xs):
      mb, j = xs
      keys = views.example_keys(key, j * micro + jnp.arange(micro))  # row in the global batch
      (_, metrics), g = grad_fn(state.params, ema, mb, keys, step)
      return jax.tree.map(jnp.add, grads, g), metrics

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    if cfg.accum_steps == 1:
      grads, metrics = micro_step(zeros, (jax.tree.map(lambda x: x[0], batch), 0))
    else:
      grads, metrics = jax.lax.scan(micro_step, zeros, (batch, jnp.arange(cfg.accum_steps)))
      # Official accumulation: each micro-batch loss is divided by accum_steps, grads summed.
      grads = jax.tree.map(lambda g: g / cfg.accum_steps, grads)
      metrics = jax.tree.map(lambda m: m.mean(axis=0), metrics)
    if cfg.debug.nan_at_step is not None:  # testing switch: poison this step's loss and gradients
      poison = jnp.where(step + 1 == cfg.debug.nan_at_step, jnp.nan, 0.0)
      grads = jax.tree.map(lambda g: g + poison.astype(g.dtype), grads)
      metrics["loss"] = metrics["loss"] + poison
    with jax.named_scope("optimizer"):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    metrics.update(grad_norm=optax.tree.norm(grads), lr=lr_fn(step))
    if cfg.optim.get("weight_decay_end") is not None:
      metrics["weight_decay"] = jnp.asarray(wd_fn(step), jnp.float32)
    if ema is not None:
      metrics["momentum"] = method.momentum(step)
    return TrainState(step=step + 1, params=params, ema_params=ema, opt_state=opt_state), metrics

  step_fn = jax.jit(update, in_shardings=(state_sh, batch_sh, repl), out_shardings=(state_sh, repl),
                    donate_argnums=0)
  return Setup(cfg, method, mesh, source, info, tx, state_sh, batch_sh, init_fn, step_fn,
               init_key, step_key, traces)


def train_batches(setup: Setup, start_step: int, host_state=None):
  """The data stream from `start_step`; the method adds its own pipeline arguments, which may
  follow its host state."""
  cfg, method = setup.config, setup.method
  return data.train_batches(
      setup.source, setup.info, image_size=method.train_image_size,
      global_batch=cfg.batch_size, accum_steps=cfg.accum_steps, start_step=start_step,
      seed=cfg.seed, min_crop=cfg.input.min_crop, process_index=jax.process_index(),
      process_count=jax.process_count(), num_threads=cfg.input.num_threads,
      prefetch=cfg.input.prefetch, num_views=method.num_views, flip=cfg.input.flip,
      color_jitter=cfg.input.get("color_jitter", 0.0), **method.pipeline_args(host_state))


def device_batch(setup: Setup, local: dict) -> dict:
  """Process-local (accum, micro/P, H, W, C) images -> the global batch on the mesh."""
  return sharding.global_batch({k: local[k] for k in setup.batch_shardings}, setup.mesh, batch_axis=1)


def abstract_state(setup: Setup) -> TrainState:
  """The train state as shapes, dtypes and target shardings (nothing is materialised)."""
  return abstract_like(jax.eval_shape(setup.init_fn, setup.init_key), setup.state_shardings)


def abstract_items(setup: Setup) -> dict:
  """What a full-state restore expects: the checkpoint items of `abstract_state`."""
  return {name: tree for name, tree in abstract_state(setup).items().items() if tree is not None}


def train(config, workdir: str, *, devices=None, stop_after_steps: int | None = None,
          command: str | None = None) -> dict:
  """Pretrain (or resume) in `workdir`. `stop_after_steps` ends early, as a preemption would;
  `command` (the command line, from the CLI) is logged and kept in config.json."""
  ########################################################################################
  # Config, data and shapes first: a rejected run (a bad field, data that is not prepared)
  # says why in one line and leaves nothing on disk. Then the workdir and logging.
  ########################################################################################
  console_logging()
  setup = prepare(config, devices)
  check_workdir(workdir)
  _setup_logging(workdir)
  try:
    if command:
      log.info("Command: %s", command)
    distributed.preflight(workdir)  # multi-host: same code everywhere, one shared workdir
    return _train(config, workdir, setup, stop_after_steps, command)
  finally:
    stop_file_logging()  # the next run in this process (a study, a test) logs to its own workdir


def _train(config, workdir: str, setup: Setup, stop_after_steps, command) -> dict:
  """`train` once the workdir and its log are set up."""
  cfg, method, mesh = setup.config, setup.method, setup.mesh
  ########################################################################################
  # Checkpoint resume. Precedence: the workdir's own latest checkpoint, else a fresh start.
  # A checkpoint of a different config is refused before anything is compiled or written.
  ########################################################################################
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep_last=cfg.checkpoint.keep_last,
                      keep_every_steps=cfg.checkpoint.keep_every_steps,
                      async_save=cfg.checkpoint.async_save)
  # The method's host-side state, if it keeps one: numpy, replicated, checkpointed.
  host = method.host_state_init(setup.info.num_examples)
  start_step, restored = _restore_latest_good(ckpt, setup, workdir, host)
  writer = MetricWriter(workdir)
  if not start_step:
    _write_config(workdir, config, cfg, command)

  evals = {name: evaluators.from_config(name, ev, method=method, mesh=mesh, workdir=workdir, writer=writer)
           for name, ev in cfg.evals.items()}

  if start_step:  # restored straight into the target shardings; nothing is initialised first
    state = TrainState(step=sharding.put_replicated(np.int32(start_step), mesh), **{
        k: restored.get(k) for k in ("params", "ema_params", "opt_state")})
    if host is not None:
      host = jax.tree.map(np.asarray, jax.device_get(restored["host_state"]))
    log.info("Resumed from step %d (data position %d).", start_step, start_step * cfg.batch_size)
  else:
    state = setup.init_fn(setup.init_key)
    _log_parameters(state.params, workdir, writer)

  total = cfg.total_steps
  stop = total if stop_after_steps is None else min(total, start_step + stop_after_steps)
  if start_step >= stop:
    if start_step == 0:  # `stop_after_steps=0` on a fresh workdir: keep the initialisation as step 0
      ckpt.save(0, {**state.items(), "host_state": host}, _meta(cfg, config, setup.info, 0), force=True)
      ckpt.wait()
      log.info("Saved the initial state as step 0.")
    else:
      log.info("Nothing to do: the checkpoint is at step %d of %d.", start_step, total)
    ckpt.close()
    writer.close()
    return {"step": start_step, "results": {}, "state": state}

  ########################################################################################
  # Compile once, ahead of time: the loop calls the compiled executable, which cannot retrace.
  ########################################################################################
  batches = iter(train_batches(setup, start_step, host))
  first = next(batches)
  t0 = time.perf_counter()
  compiled = setup.step_fn.lower(state, device_batch(setup, first), setup.step_key).compile()
  log.info("Compiled the train step in %.1f s.", time.perf_counter() - t0)

  ########################################################################################
  # Evals and the loop.
  ########################################################################################
  results = {}
  if start_step == 0:
    results.update(_run_evals(evals, cfg, state, 0, writer, at_init=True))
  preemption = PreemptionWatch()
  profile = Profile(config_lib.profile_range(cfg.get("profile_steps")), os.path.join(workdir, "profile"))
  try:
    state, results, stop = _loop(setup, ckpt, writer, evals, config, state, batches, first, host,
                                 start_step, stop, results, compiled, preemption, profile)
    ckpt.close()  # waits for the last save; a failure to write it is reported like any other
  except (OSError, CheckpointWriteError) as e:  # a failing save or log write: what is intact
    raise _write_error(e, workdir, ckpt) from e
  finally:
    profile.stop()
    preemption.restore()
    writer.close()
    if not ckpt.closed:  # leaving on an error: still let a save in flight (a good step) commit
      try:
        ckpt.close()
      except CheckpointWriteError as e:  # secondary to the error already on its way out
        log.error("While stopping: %s", e)
  if stop == total and jax.process_index() == 0:
    _report(workdir, results)
  return {"step": stop, "results": results, "state": state, "preempted": preemption.stopped_at is not None}


def _loop(setup, ckpt, writer, evals, config, state, batches, first, host, start_step, stop, results,
          compiled, preemption, profile):
  """The training loop proper; returns (state, eval results, the step it stopped at)."""
  cfg, method, mesh = setup.config, setup.method, setup.mesh
  total = cfg.total_steps
  pending, t_last, step_last = [], time.perf_counter(), start_step
  local, previous = first, None
  for step in range(start_step, stop):
    if local is None:
      local = next(batches)
    profile.before(step)
    batch = device_batch(setup, local)  # the one explicit host->device copy per step
    with jax.transfer_guard("disallow"):  # no implicit host<->device copies in the step
      state, metrics = compiled(state, batch, setup.step_key)
    local = None
    pending.append(metrics)
    profile.after(step, metrics)
    done = step + 1
    # At most one step in flight ahead of the one the device is running: step `done` is queued
    # before we wait for the previous one, so the device never idles, yet the host never runs
    # many steps ahead — a SIGTERM is then saved within one step of arriving, not after every
    # step already dispatched (spot VMs give ~30 s).
    if previous is not None:
      jax.block_until_ready(previous)
    previous = metrics
    # Host-side only: a signal flag, or on TPU pods Orbax's agreed preemption step (all hosts).
    preempted = preemption.requested or ckpt.reached_preemption(done)
    save_due = done == stop or preempted or bool(
        (cfg.checkpoint.every_steps and done % cfg.checkpoint.every_steps == 0) or
        (cfg.checkpoint.keep_every_steps and done % cfg.checkpoint.keep_every_steps == 0))
    due = [n for n, ev in cfg.evals.items() if done == total or (ev.every_steps and done % ev.every_steps == 0)]
    # Metrics are fetched (the only host sync) at log steps and before anything is saved or
    # evaluated, so a NaN is caught before it can reach a checkpoint.
    if done % cfg.log_every_steps == 0 or save_due or due:
      now = time.perf_counter()
      rows = jax.device_get(pending)
      check_finite(rows, done - len(rows) + 1, ckpt)
      summary = _summarise(rows, done, cfg, now - t_last, done - step_last, stop, method.schedule_metrics)
      pending, t_last, step_last = [], now, done
      writer.write_scalars(done, summary)
      log.info(format_line(done, total, summary))
      for warning in method.health_warnings(summary, done):
        log.warning(warning)
    if host is not None and method.host_state_due(done):
      t0 = time.perf_counter()
      host = method.compute_host_state(state.params, state.ema_params, setup.source, setup.info, mesh)
      batches, local = iter(train_batches(setup, done, host)), None  # the stream with the new state
      log.info("Refreshed the method's host state at step %d (%.1f s).", done, time.perf_counter() - t0)
      t_last = time.perf_counter()
    if save_due:
      ckpt.save(done, {**state.items(), "host_state": host}, _meta(cfg, config, setup.info, done), force=True)
    if preempted:
      ckpt.wait()
      preemption.stopped_at = done
      log.warning("Preempted: saved step %d of %d and stopping; rerun the same command to resume.", done, total)
      return state, results, done
    if due:
      results.update(_run_evals({n: evals[n] for n in due}, cfg, state, done, writer))
      t_last = time.perf_counter()  # evals do not count against images/s
  ckpt.wait()
  return state, results, stop


class Profile:
  """`profile_steps='a:b'`: a jax.profiler trace of steps a..b-1 in `directory` (TensorBoard's
  profile tab, or Perfetto). The trace stops once step b-1 has finished on the device."""

  def __init__(self, steps: tuple[int, int] | None, directory: str):
    self.steps, self.directory, self.running = steps, directory, False

  def before(self, step: int):
    if self.steps and step == self.steps[0]:
      jax.profiler.start_trace(self.directory)
      self.running = True
      log.info("Profiling steps %d..%d into %s.", self.steps[0], self.steps[1] - 1, self.directory)

  def after(self, step: int, outputs):
    if self.running and step == self.steps[1] - 1:
      jax.block_until_ready(outputs)
      self.stop()

  def stop(self):
    if self.running:
      jax.profiler.stop_trace()
      self.running = False
      log.info("Wrote the profile to %s.", self.directory)


# Faults --------------------------------------------------------------------------------------

class PreemptionWatch:
  """SIGTERM (what a preemptible VM, SLURM's time limit or `kill` sends) -> stop at the next step
  boundary after saving it. In a multi-process job JAX's own preemption service owns SIGTERM and
  agrees a step across hosts (Checkpointer.reached_preemption); this handler is for one process."""

  def __init__(self):
    self.requested, self.stopped_at, self._previous = False, None, None
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.requested = True
    log.warning("Received signal %d: saving at the end of this step.", signum)

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None


def check_finite(rows: list, first_step: int, ckpt) -> None:
  """Stop on the first step whose loss or gradient norm is NaN/Inf, naming the step and quantity.

  Called before anything is saved, so the non-finite state never reaches a checkpoint; saves
  already in flight (of good steps) are completed first so the message names the last one."""
  for i, row in enumerate(rows):
    for key, what in (("loss", "the loss"), ("grad_norm", "the gradient norm")):
      value = float(row.get(key, 0.0))
      if not np.isfinite(value):
        ckpt.wait()
        last = ckpt.latest_step()
        kept = f"the last checkpoint (step {last}) is intact" if last is not None else "no checkpoint was written"
        raise NonFiniteError(f"training stopped: {what} is {value} at step {first_step + i}; {kept}. "
                             "Lower optim.blr, set optim.grad_clip_norm, or use model.dtype='float32'")


def check_workdir(workdir: str) -> None:
  """The workdir must be writable before anything is built (a one-line error otherwise)."""
  if "://" in workdir:
    return  # object stores: Orbax and tf.io report permission problems at the first write
  probe = os.path.join(workdir, f".lmim_write_test.{jax.process_index()}")
  try:
    os.makedirs(workdir, exist_ok=True)
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise WorkdirError(f"workdir {workdir} is not writable: {e.strerror or e} "
                       f"({getattr(e, 'filename', None) or workdir})") from None


def _write_error(e: BaseException, workdir: str, ckpt) -> WorkdirError:
  """A failed write (full disk, quota, permissions) as one line saying what is still intact."""
  reason = e.reason if isinstance(e, CheckpointWriteError) else write_failure_reason(e)
  try:
    last = ckpt.latest_step()
  except Exception:  # pylint: disable=broad-except
    last = None
  kept = f"the last complete checkpoint (step {last}) is intact" if last else "no checkpoint was completed"
  return WorkdirError(f"writing to workdir {workdir} failed: {reason}; {kept}. Free space (or fix the "
                      "permissions) and rerun the same command to resume")


def _restore_latest_good(ckpt, setup: Setup, workdir: str, host=None):
  """-> (step, restored items) of the newest readable checkpoint, (0, None) for a fresh start.

  A step whose files are truncated or corrupt is moved aside (`corrupt-<step>`, never deleted)
  with a warning and the previous one is tried; a checkpoint of a different config is refused.
  `host` is the method's initial host state (its shapes), if it keeps one.
  """
  cfg = setup.config
  steps = sorted(ckpt.all_steps(), reverse=True)
  if not steps:
    return 0, None
  items = abstract_items(setup)
  if host is not None:
    items["host_state"] = abstract_like(host, sharding.replicated(setup.mesh))
  for step in steps:
    try:
      saved = ckpt.restore_meta(step)
      diffs = config_lib.diff_configs(config_lib.upgrade(saved["config"]), cfg.to_dict(),
                                      defaults=config_lib.base_config(cfg.method).to_dict())
      if diffs:
        raise CheckpointError(f"{workdir} holds a checkpoint (step {step}) of a different config; "
                              f"refusing to resume. Use another --workdir, or restore these fields: "
                              + "; ".join(diffs))
      return step, ckpt.restore(step, items)
    except CheckpointReadError as e:
      moved = ckpt.quarantine(step)
      log.warning("Checkpoint step %d is unreadable (%s); moved it to %s and trying the previous one.",
                  step, e, moved)
  return 0, None


# Helpers -------------------------------------------------------------------------------------

def _meta(cfg, user_config, info, step: int) -> dict:
  """What a resume, a probe or `inspect_ckpt` needs besides the arrays."""
  return {"config": cfg.to_dict(), "user_config": user_config.to_dict(), "step": step,
          # The data position is a global example index: any process count resumes from it.
          "data_position": step * cfg.batch_size, "method": cfg.method,
          "data": {"name": info.name, "channels": info.channels, "num_examples": info.num_examples,
                   "mean": list(info.mean), "std": list(info.std)},
          "process_count": jax.process_count(), "jax_version": jax.__version__}


def _summarise(pending: list, step: int, cfg, seconds: float, steps: int, stop: int, schedules=()) -> dict:
  """Mean over the steps since the last log line; schedule values (the learning rate, the EMA
  momentum and the method's `schedules`) from the last step."""
  out = {k: float(np.mean([m[k] for m in pending])) for k in pending[0]}
  for k in ("lr", "momentum", *schedules):
    if k in pending[-1]:
      out[k] = float(pending[-1][k])
  out["images_per_sec"] = steps * cfg.batch_size / max(seconds, 1e-9)
  out["eta_sec"] = (stop - step) * seconds / max(steps, 1)
  return out


def _run_evals(evals: dict, cfg, state, step: int, writer, at_init: bool = False) -> dict:
  out = {}
  for name, ev in evals.items():
    if at_init and not cfg.evals[name].get("at_init", False):
      continue
    t0 = time.perf_counter()
    this = {}
    for metric, value in ev.run(state):
      key = f"{name}/{metric}" + ("_init" if at_init else "")
      this[key] = value
      log.info("eval %s at step %d: %.3f (%.1f s)", key, step, value, time.perf_counter() - t0)
    writer.write_scalars(step, this)  # each eval's values once: a curve has one point per step
    out.update(this)
  return out


def _report(workdir: str, results: dict):
  """End of run: the evals at the end, beside the same evals at initialisation and, for an eval
  `<name>` with a twin `<name>_pixels` (feature='pixels'), beside raw pixels by the same protocol."""
  init = {}
  for row in read_jsonl(os.path.join(workdir, "metrics.jsonl")):
    if row["step"] == 0:
      init.update({k: v for k, v in row.items() if k.endswith("_init")})
  pixels = {}
  for key, value in results.items():
    name, _, metric = key.partition("/")
    if name.endswith("_pixels") and not key.endswith("_init"):
      pixels[f"{name[:-len('_pixels')]}/{metric}"] = value
  lines = []
  for key, value in results.items():
    if key.endswith("_init") or key.partition("/")[0].endswith("_pixels"):
      continue
    extra = [f"at initialisation: {init[key + '_init']:.2f}"] if key + "_init" in init else []
    extra += [f"raw pixels: {pixels[key]:.2f}"] if key in pixels else []
    lines.append(f"  {key}: {value:.2f}" + (f"   ({'; '.join(extra)})" if extra else ""))
  if lines:
    log.info("Final evaluation:\n%s", "\n".join(lines))
  with open(os.path.join(workdir, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"final": {k: v for k, v in results.items() if not k.endswith("_init") and k not in
                         {f"{n.partition('/')[0]}_pixels/{n.partition('/')[2]}" for n in pixels}},
               "init": init, "pixels": pixels}, f, indent=1)


def _write_config(workdir: str, user_config, cfg, command: str | None = None):
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      json.dump({"command": command, "user_config": user_config.to_dict(), "resolved": cfg.to_dict()}, f,
                indent=1, default=str)


def _log_parameters(params, workdir: str, writer):
  """Parameter count on the console; the per-parameter table in parameters.txt and TensorBoard."""
  from clu import parameter_overview  # pylint: disable=import-outside-toplevel
  text = parameter_overview.get_parameter_overview(params, include_stats=False)
  n = parameter_overview.count_parameters(params)
  log.info("Trainable parameters: %s (%.2fM); table in %s/parameters.txt", f"{n:,}", n / 1e6, workdir)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "parameters.txt"), "w", encoding="utf-8") as f:
      f.write(text + "\n")
  writer.write_text("parameters", f"<pre>{text}</pre>")


def _setup_logging(workdir: str):
  os.makedirs(workdir, exist_ok=True)
  console_logging()
  if jax.process_index() == 0:  # one log file per run, written by process 0
    file_logging(os.path.abspath(os.path.join(workdir, "log.txt")))


def main():
  """The `lmim-train` command (python -m lmim.train)."""
  from lmim import cli  # pylint: disable=import-outside-toplevel
  cli.main_train(train)


if __name__ == "__main__":
  main()
