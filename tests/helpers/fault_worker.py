"""A tiny training run in its own process, for the fault tests (tests/test_faults.py).

    python tests/helpers/fault_worker.py WORKDIR [--steps N] [--stop-after K] [--kill-after-save-start STEP]
                                 [--fsize-limit BYTES] [--sleep-per-step SECONDS]

Same device count and compile options as the test process, so its programs (and results) are
bitwise those of an in-process run. On success it writes WORKDIR/final_params.npz.
  --kill-after-save-start S   SIGKILL this process right after the asynchronous save of step S
                              has started (the arrays are being written in the background)
  --fsize-limit B             RLIMIT_FSIZE: writing any file past B bytes fails with EFBIG, the
                              way a full disk fails a write
  --heavy                     a model whose step is slow on the device and quick on the host (as
                              on a real accelerator), metrics fetched rarely: asynchronous
                              dispatch could let the host run many steps ahead
  --one-device                one CPU device instead of 8 (as the main job runs here)
  --sigterm-at-host-step S    send this process SIGTERM as the host prepares step S (0-based),
                              printing how many steps the device has finished at that moment
"""
import argparse
import os
import resource
import signal
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(os.path.dirname(HERE))]  # the helpers, then the checkout

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

# `--one-device` (argv is read before jax starts): the main job's setting, one CPU device.
jax.config.update("jax_num_cpu_devices", 1 if "--one-device" in sys.argv else 8)
jax.config.update("jax_compilation_cache_dir", os.environ.get("LMIM_TEST_JAX_CACHE", "/tmp/lmim_test_jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

from lmim import checkpoint, cli, train  # pylint: disable=wrong-import-position
from tiny import tiny_config  # pylint: disable=wrong-import-position


def config(steps: int, heavy: bool = False):
  c = tiny_config(**{"total_steps": steps, "checkpoint.every_steps": 2, "log_every_steps": 1,
                     "checkpoint.keep_last": 3})
  if heavy:
    # The main job's model and batch (configs/lmim_demo.py), where the host outruns the device.
    c = tiny_config(**{"total_steps": steps, "checkpoint.every_steps": 1000, "log_every_steps": 1000,
                       "model.width": 96, "model.depth": 4, "model.num_heads": 4, "model.grid_size": 7,
                       "model.projector.dim": 384, "model.decoder.width": 64, "model.decoder.depth": 2,
                       "model.decoder.num_heads": 4, "views.num_vis": 10, "batch_size": 128,
                       "sim_reg.group_size": 64})
  return c


def signal_at_host_step(step: int):
  """SIGTERM to this process when the host prepares `step`; prints the device's progress then
  (train steps whose metrics are ready), observed by wrapping the compiled train step's calls."""
  outputs = []
  call = jax.stages.Compiled.__call__

  def recording_call(self, *args, **kwargs):
    out = call(self, *args, **kwargs)
    outputs.append(out[1])  # (state, metrics): the state is donated to the next step, the metrics stay
    return out
  jax.stages.Compiled.__call__ = recording_call
  device_batch, calls = train.device_batch, [0]

  def hooked_device_batch(*args, **kwargs):
    if calls[0] == step:
      done = sum(all(x.is_ready() for x in jax.tree.leaves(o)) for o in outputs)
      print(f"SIGTERM at host step {step}: device finished {done} steps", flush=True)
      os.kill(os.getpid(), signal.SIGTERM)
    calls[0] += 1
    return device_batch(*args, **kwargs)
  train.device_batch = hooked_device_batch


def flat_params(params) -> dict:
  """{'[\'encoder\'][...]': host array} for a parameter tree."""
  leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
  return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("workdir")
  ap.add_argument("--steps", type=int, default=12)
  ap.add_argument("--kill-after-save-start", type=int, default=None)
  ap.add_argument("--fsize-limit", type=int, default=None)
  ap.add_argument("--stop-after", type=int, default=None, help="stop after this many steps (as a preemption)")
  ap.add_argument("--sleep-per-step", type=float, default=0.0,
                  help="host-side pause before each step, so a signal lands mid-run (numerics unchanged)")
  ap.add_argument("--heavy", action="store_true")
  ap.add_argument("--one-device", action="store_true")
  ap.add_argument("--sigterm-at-host-step", type=int, default=None)
  a = ap.parse_args()
  if a.sigterm_at_host_step is not None:
    signal_at_host_step(a.sigterm_at_host_step)
  if a.kill_after_save_start is not None:
    save = checkpoint.Checkpointer.save

    def save_then_die(self, step, *args, **kwargs):
      started = save(self, step, *args, **kwargs)
      if step == a.kill_after_save_start:
        print(f"killing during the save of step {step}", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
      return started
    checkpoint.Checkpointer.save = save_then_die
  if a.sleep_per_step:
    device_batch = train.device_batch

    def slow_device_batch(*args, **kwargs):
      time.sleep(a.sleep_per_step)
      return device_batch(*args, **kwargs)
    train.device_batch = slow_device_batch
  if a.fsize_limit is not None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write, not a killed process
    resource.setrlimit(resource.RLIMIT_FSIZE, (a.fsize_limit, a.fsize_limit))
  out = cli.guard(lambda: train.train(config(a.steps, a.heavy), a.workdir, stop_after_steps=a.stop_after))
  print(f"finished at step {out['step']} preempted={out.get('preempted')}", flush=True)
  np.savez(os.path.join(a.workdir, "final_params.npz"), **flat_params(out["state"].params))


if __name__ == "__main__":
  main()
