"""Schedules of the official loop (docs/latent_mim.md §7, §9.4, §10), as functions of the
optimiser step.

The official code evaluates them at the fractional epoch t = step / steps_per_epoch, once per
accumulation group; with T the total, t/T = step / total_steps, which is what is used here.
They work on Python numbers and on traced jnp scalars alike.
"""
import jax.numpy as jnp


def _cosine(frac):
  """½(1 + cos(π·frac)): 1 at frac = 0, 0 at frac = 1."""
  return 0.5 * (1.0 + jnp.cos(jnp.pi * frac))


def learning_rate(step, *, peak: float, total_steps: float, warmup_steps: float, min_lr_frac: float = 0.0,
                  min_lr: float | None = None, warmup_start_lr: float | None = None):
  """Linear warmup from `warmup_start_lr` to peak, then cosine down to the floor.

  The floor is `min_lr` (absolute) or `min_lr_frac`·peak; warmup starts from the floor unless
  `warmup_start_lr` is given — the official Latent MIM schedule starts from its floor (0.25·peak,
  not 0), MAE's from 0 with floor 0, data2vec's from 0 with floor 1e-5, I-JEPA's from 2e-4 with
  floor 1e-6 (the last two absolute, as their code sets them)."""
  step = jnp.asarray(step, jnp.float32)
  lo = peak * min_lr_frac if min_lr is None else min_lr
  start = lo if warmup_start_lr is None else warmup_start_lr
  warm = start + (peak - start) * step / jnp.maximum(warmup_steps, 1e-12)
  frac = (step - warmup_steps) / jnp.maximum(total_steps - warmup_steps, 1e-12)
  decay = lo + (peak - lo) * _cosine(frac)
  return jnp.where(step < warmup_steps, warm, decay)


EMA_SCHEDULES = ("cosine", "linear")


def ema_momentum(step, *, total_steps: float, base: float, end: float = 1.0, schedule: str = "cosine"):
  """The EMA momentum from m0 = `base` at step 0 to `end` at the last step:
    cosine  m(t) = end − ½(1 + cos(π t/T))(end − m0)   Latent MIM, PCAE (BYOL's; end = 1)
    linear  m(t) = m0 + (end − m0)·t/T                  I-JEPA (0.996 → 1), data2vec (constant)"""
  if schedule == "linear":
    return linear(step, total_steps=total_steps, start=base, end=end)
  step = jnp.asarray(step, jnp.float32)
  return end - _cosine(step / total_steps) * (end - base)


def cosine(step, *, total_steps: float, start: float, end: float):
  """end + ½(1 + cos(π t/T))(start − end): from start at t = 0 to end at t = T (I-JEPA's weight
  decay, 0.04 → 0.4)."""
  step = jnp.asarray(step, jnp.float32)
  return end + _cosine(step / total_steps) * (start - end)


def sim_target(step, *, total_steps: float, start: float, end: float):
  """s_t = end + ½(1 + cos(π t/T))(start − end): the regulariser's target similarity."""
  step = jnp.asarray(step, jnp.float32)
  return end + _cosine(step / total_steps) * (start - end)


def linear(step, *, total_steps: float, start: float, end: float):
  """start + (end − start)·t/T: I-JEPA's EMA momentum (0.996 → 1), data2vec's (constant)."""
  step = jnp.asarray(step, jnp.float32)
  return start + (end - start) * jnp.clip(step / total_steps, 0.0, 1.0)
