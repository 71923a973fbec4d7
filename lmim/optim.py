"""AdamW with the official weight-decay rule and learning-rate schedule (docs/latent_mim.md §10).

torch AdamW and optax.adamw are the same update (decoupled decay lr·wd·θ, bias-corrected
moments, eps outside the square root), so the official step is reproduced to round-off.
"""
import functools

import jax
import optax

from lmim import schedules


def path_name(path) -> str:
  """'encoder/blocks_0/attn/qkv/kernel' from a jax tree path."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def official_decay(name: str, ndim: int) -> bool:
  """Decay unless 1-D (biases, LN scales) or the name contains bias, norm or embed.

  The "embed" clause is the official code's: the patch-embedding kernel and the decoder's
  input embedding get no decay, nor would a learnable position table. CLS and mask tokens
  (3-D) do decay.
  """
  return ndim > 1 and not any(s in name for s in ("bias", "norm", "embed"))


def layer_ndim(name: str, ndim: int) -> int:
  """A leaf's rank as one layer sees it: weights of scanned blocks (`.../blocks/...`, stacked
  along a leading depth axis by model.scan_layers) have one dimension more than a layer's."""
  return ndim - 1 if "blocks" in name.split("/") else ndim


def decay_mask(params, rule=official_decay):
  """Bool tree: which parameters get weight decay (the same with and without scan_layers)."""
  return jax.tree_util.tree_map_with_path(
      lambda p, x: rule(path_name(p), layer_ndim(path_name(p), x.ndim)), params)


def make(optim_cfg, *, peak_lr: float, total_steps: float, warmup_steps: float,
         decay_rule=official_decay) -> optax.GradientTransformation:
  """optim_cfg fields: min_lr_frac, weight_decay, b1, b2, eps, grad_clip_norm (None = off)."""
  lr = functools.partial(schedules.learning_rate, peak=peak_lr, total_steps=total_steps,
                         warmup_steps=warmup_steps, min_lr_frac=optim_cfg.min_lr_frac)
  adamw = optax.adamw(lr, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                      weight_decay=optim_cfg.weight_decay,
                      mask=functools.partial(decay_mask, rule=decay_rule))
  if optim_cfg.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(optim_cfg.grad_clip_norm), adamw)
  return adamw
