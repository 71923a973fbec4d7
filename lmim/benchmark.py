"""Train-step benchmark on synthetic data: compile time, step time, images/s, FLOPs, FLOP/s.

    python -m lmim.benchmark --config configs/lmim_vitb16_in1k.py:variant=Ti/16 \
        --config.batch_size=8 --config.sim_reg.group_size=8 --steps 10
    python -m lmim.benchmark --config configs/pcae_vitb16_in1k.py:variant=Ti/16 --config.batch_size=8

The step is the trainer's own (same jit, shardings and donation); images are random, so no
dataset is needed. FLOPs are XLA's count for the compiled step (per optimiser step, all devices;
with accum_steps > 1 XLA counts the scanned micro-step body once, so the figure is scaled by
accum_steps). Speed targets belong here, never in timed tests.
"""
import statistics
import time

import jax
import numpy as np

from lmim import data, train


def benchmark(config, *, steps: int = 10, warmup: int = 2, devices=None, channels: int = 3) -> dict:
  info = data.DataInfo(name="synthetic", num_examples=1_281_167, num_classes=1000, channels=channels,
                       mean=(0.5,) * channels, std=(0.25,) * channels)
  setup = train.build(config, info, devices)
  cfg, method = setup.config, setup.method
  size, k = method.train_image_size, cfg.accum_steps
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
  times = []
  for i in range(warmup + steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch, setup.step_key)
    jax.block_until_ready((state, metrics))
    if i >= warmup:
      times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {"compile_s": compile_s, "median_step_s": med, "images_per_s": cfg.batch_size / med,
          "flops_per_step": flops, "flops_per_s": flops / med, "steps": steps,
          "batch_size": cfg.batch_size, "devices": len(setup.mesh.devices.flat),
          "image_size": size, "loss": float(metrics["loss"])}


def format_report(r: dict) -> str:
  return (f"compile {r['compile_s']:.1f} s | median step {r['median_step_s'] * 1e3:.1f} ms | "
          f"{r['images_per_s']:.2f} images/s | {r['flops_per_step'] / 1e9:.1f} GFLOP/step | "
          f"{r['flops_per_s'] / 1e9:.1f} GFLOP/s achieved | batch {r['batch_size']} at "
          f"{r['image_size']} px on {r['devices']} device(s)")


def main():
  """The `lmim-benchmark` command (python -m lmim.benchmark)."""
  from lmim import cli  # pylint: disable=import-outside-toplevel
  cli.main_benchmark(benchmark, format_report)


if __name__ == "__main__":
  main()
