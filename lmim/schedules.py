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


def learning_rate(step, *, peak: float, total_steps: float, warmup_steps: float, min_lr_frac: float):
  """Linear warmup from min_lr to peak (note: from min_lr, not 0), then cosine down to min_lr."""
  step = jnp.asarray(step, jnp.float32)
  lo = peak * min_lr_frac
  warm = lo + (peak - lo) * step / jnp.maximum(warmup_steps, 1e-12)
  frac = (step - warmup_steps) / jnp.maximum(total_steps - warmup_steps, 1e-12)
  decay = lo + (peak - lo) * _cosine(frac)
  return jnp.where(step < warmup_steps, warm, decay)


def ema_momentum(step, *, total_steps: float, base: float):
  """m(t) = 1 − ½(1 + cos(π t/T))(1 − m0): from m0 at the start to 1 at the end."""
  step = jnp.asarray(step, jnp.float32)
  return 1.0 - _cosine(step / total_steps) * (1.0 - base)


def sim_target(step, *, total_steps: float, start: float, end: float):
  """s_t = end + ½(1 + cos(π t/T))(start − end): the regulariser's target similarity."""
  step = jnp.asarray(step, jnp.float32)
  return end + _cosine(step / total_steps) * (start - end)


def linear(step, *, total_steps: float, start: float, end: float):
  """start + (end − start)·t/T: I-JEPA's EMA momentum (0.996 → 1), data2vec's (constant)."""
  step = jnp.asarray(step, jnp.float32)
  return start + (end - start) * jnp.clip(step / total_steps, 0.0, 1.0)
