"""AdamW with the official weight-decay rule and learning-rate schedule (docs/latent_mim.md §10).

torch AdamW and optax.adamw are the same update (decoupled decay lr·wd·θ, bias-corrected
moments, eps outside the square root), so the official step is reproduced to round-off.
"""
import functools

import jax
import jax.numpy as jnp
import optax

from lmim import schedules
from lmim.trees import path_name


def official_decay(name: str, ndim: int) -> bool:
  """Decay unless 1-D (biases, LN scales) or the name contains bias, norm or embed.

  The "embed" clause is the official code's: the patch-embedding kernel and the decoder's
  input embedding get no decay, nor would a learnable position table. CLS and mask tokens
  (3-D) do decay.
  """
  return ndim > 1 and not any(s in name for s in ("bias", "norm", "embed"))


def timm_decay(name: str, ndim: int) -> bool:
  """timm's `add_weight_decay` (MAE, PCAE and CMAE's optimisers): no decay for 1-D parameters and
  biases; everything else decays — the CLS and mask tokens and the patch embedding included."""
  return ndim > 1 and not name.endswith("bias")


def data2vec_decay(name: str, ndim: int) -> bool:
  """data2vec's `get_parameter_groups`: timm's rule, and no decay for the CLS token or an absolute
  position table (its `no_weight_decay()`); the mask token and the relative-position table decay."""
  return timm_decay(name, ndim) and name.rsplit("/", 1)[-1] not in ("cls_token", "pos_embed")


def ijepa_decay(name: str, ndim: int) -> bool:
  """I-JEPA's `init_opt`: no decay for 1-D parameters or any parameter whose name contains 'bias'."""
  return ndim > 1 and "bias" not in name


def layer_ndim(name: str, ndim: int) -> int:
  """A leaf's rank as one layer sees it: weights of scanned blocks (`.../blocks/...`, stacked
  along a leading depth axis by model.scan_layers) have one dimension more than a layer's."""
  return ndim - 1 if "blocks" in name.split("/") else ndim


def decay_mask(params, rule=official_decay):
  """Bool tree: which parameters get weight decay (the same with and without scan_layers)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: rule(path_name(p), layer_ndim(path_name(p), x.ndim)), params)


def lr_schedule(optim_cfg, *, peak_lr: float, total_steps: float, warmup_steps: float):
  """step -> learning rate (lmim.schedules.learning_rate with the config's floor and warmup start)."""
  return functools.partial(schedules.learning_rate, peak=peak_lr, total_steps=total_steps,
                           warmup_steps=warmup_steps, min_lr_frac=optim_cfg.min_lr_frac,
                           min_lr=optim_cfg.get("min_lr"), warmup_start_lr=optim_cfg.get("warmup_start_lr"))


def wd_schedule(optim_cfg, *, total_steps: float):
  """step -> weight decay: constant, or a cosine from `weight_decay` to `weight_decay_end` (I-JEPA)."""
  end = optim_cfg.get("weight_decay_end")
  if end is None:
    return lambda step: optim_cfg.weight_decay
  return functools.partial(schedules.cosine, total_steps=total_steps, start=optim_cfg.weight_decay, end=end)


def add_scheduled_decayed_weights(schedule) -> optax.GradientTransformation:
  """optax.add_decayed_weights with the decay a function of the step: updates + wd(step)·params."""
  def init(params):
    del params
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    wd = schedule(state.count)
    updates = jax.tree.map(lambda u, p: u + wd * p, updates, params)
    return updates, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
  return optax.GradientTransformation(init, update)


def make(optim_cfg, lr, *, total_steps: float, decay_rule=official_decay) -> optax.GradientTransformation:
  """`lr`: step -> learning rate (`lr_schedule`, also what the trainer logs). optim_cfg fields: min_lr_frac or min_lr, warmup_start_lr, weight_decay (+ weight_decay_end for
  a cosine schedule of it), b1, b2, eps, grad_clip_norm (None = off).

  AdamW with decoupled decay, as torch's: a constant decay is optax.adamw itself; a scheduled one
  is the same chain (Adam, masked decay, learning rate) with the decay evaluated at the step."""
  mask = functools.partial(decay_mask, rule=decay_rule)
  if optim_cfg.get("weight_decay_end") is None:
    adamw = optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                        weight_decay=optim_cfg.weight_decay, mask=mask)
  else:
    adamw = optax.chain(
        optax.scale_by_adam(b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps),
        optax.masked(add_scheduled_decayed_weights(wd_schedule(optim_cfg, total_steps=total_steps)), mask),
        optax.scale_by_learning_rate(lr))
  if optim_cfg.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), adamw)
  return adamw
