"""End-to-end fine-tuning, MAE's recipe (docs/methods.md §4c), sharded like pretraining.

    model     the pretrained encoder (no projector) with stochastic depth (linear ramp to
              `drop_path`), global average pooling of the last block's patch tokens → fc_norm (LN)
              → linear head (trunc-normal 2e-5); the encoder's final LayerNorm is not used
    optimiser AdamW (0.9, 0.999), wd 0.05 (none on 1-D parameters, position tables and CLS), layer-wise
              lr decay: scale decay^(L+1−j), j = 0 for the embedding/CLS, i+1 for block i, L+1 for
              the head; lr = blr · batch/256, warmup from 0, half-cycle cosine to min_lr
    data      RandomResizedCrop(0.08, 1) + flip + RandAugment(m9, mstd 0.5, inc1) + random erasing
              0.25 on the host; Mixup 0.8 / CutMix 1.0 (switch 0.5, one λ per batch) with label
              smoothing 0.1 on device; soft-target cross entropy
    eval      Resize(size/0.875) + CenterCrop, top-1 / top-5 after every `eval_every_epochs` epochs
              and at the end, as MAE's main_finetune.py does: `top1`/`top5` of the final model and
              `top1_best` with its `best_epoch` (MAE's logged "Max accuracy")
The state is laid out with lmim.sharding (FSDP above the size threshold) and the step is jitted
once with the state donated.
"""
import logging
import math
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from lmim import data as lmim_data
from lmim import sharding, views
from lmim.data import augment
from lmim.errors import ConfigError
from lmim.evaluators import common
from lmim.inference import pad_rows, replicate
from lmim.models import layers
from lmim.optim import layer_ndim
from lmim.trees import path_name


class Head(nn.Module):
  """fc_norm (LN) on the pooled patch tokens, then the classifier."""
  num_classes: int

  @nn.compact
  def __call__(self, pooled):
    x = layers.layer_norm("fc_norm")(pooled)
    return nn.Dense(self.num_classes, kernel_init=nn.initializers.truncated_normal(2e-5),
                    bias_init=nn.initializers.zeros, name="head")(x)


def layer_id(name: str, depth: int) -> int:
  m = re.search(r"blocks_(\d+)", name)
  if m:
    return int(m.group(1)) + 1
  if name.startswith("encoder/") and not name.startswith("encoder/norm"):
    return 0           # patch embedding, CLS, position table
  return depth + 1     # fc_norm and the head


def lr_scales(params, depth: int, decay: float):
  """Layer-wise lr factors; a scanned block leaf (`encoder/blocks/...`, stacked over layers) gets
  one factor per layer along its leading axis, so both layouts train identically."""
  def one(path, x):
    name = path_name(path)
    if "blocks" in name.split("/"):
      return (decay ** (depth - np.arange(depth, dtype=np.float32))).reshape((depth,) + (1,) * (x.ndim - 1))
    return decay ** (depth + 1 - layer_id(name, depth))
  return jax.tree_util.tree_map_with_path(one, params)


def decays(name: str, ndim: int) -> bool:
  ndim = layer_ndim(name, ndim)
  return ndim > 1 and not any(s in name for s in ("pos_embed", "cls_token", "bias"))


def schedule(step, *, peak: float, total: int, warmup: int, min_lr: float):
  step = jnp.asarray(step, jnp.float32)
  warm = peak * step / max(warmup, 1)
  cos = min_lr + (peak - min_lr) * 0.5 * (1 + jnp.cos(jnp.pi * (step - warmup) / max(total - warmup, 1)))
  return jnp.where(step < warmup, warm, cos)


def mix(key, images, labels, num_classes: int, *, mixup: float, cutmix: float, switch: float, smoothing: float):
  """timm's Mixup in 'batch' mode: one λ for the batch, partner = the batch reversed."""
  off = smoothing / num_classes
  onehot = lambda y: jax.nn.one_hot(y, num_classes) * (1.0 - smoothing) + off
  if mixup <= 0 and cutmix <= 0:
    return images, onehot(labels)
  k_choice, k_mix, k_cut, k_y, k_x = jax.random.split(key, 5)
  use_cut = (jax.random.uniform(k_choice) < switch) if (mixup > 0 and cutmix > 0) else jnp.asarray(cutmix > 0)
  lam_mix = jax.random.beta(k_mix, max(mixup, 1e-6), max(mixup, 1e-6))
  lam_cut = jax.random.beta(k_cut, max(cutmix, 1e-6), max(cutmix, 1e-6))
  h, w = images.shape[1:3]
  cut = jnp.sqrt(1.0 - lam_cut)
  ch, cw = (h * cut).astype(jnp.int32), (w * cut).astype(jnp.int32)
  cy, cx = jax.random.randint(k_y, (), 0, h), jax.random.randint(k_x, (), 0, w)
  y0, y1 = jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h)
  x0, x1 = jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)
  rows, cols = jnp.arange(h)[:, None], jnp.arange(w)[None, :]
  box = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))[None, :, :, None]
  partner = images[::-1]
  lam_box = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)   # timm corrects λ to the clipped box area
  mixed = jnp.where(use_cut, jnp.where(box, partner, images), lam_mix * images + (1 - lam_mix) * partner)
  lam = jnp.where(use_cut, lam_box, lam_mix)
  return mixed, lam * onehot(labels) + (1 - lam) * onehot(labels[::-1])


datasets = common.train_and_eval_splits


class Evaluator:
  def __init__(self, ctx, *, data: str, split: str, train_split: str = "train", data_dir=None, mean=None,
               std=None, classes=None, encoder: str = "online", image_size=None, epochs: float = 100,
               warmup_epochs: float = 5, batch_size: int = 1024, blr: float = 5e-4, min_lr: float = 1e-6,
               weight_decay: float = 0.05,
               layer_decay: float = 0.65, drop_path: float = 0.1, mixup: float = 0.8, cutmix: float = 1.0,
               mixup_switch_prob: float = 0.5, label_smoothing: float = 0.1,
               rand_augment: str = "rand-m9-mstd0.5-inc1", random_erasing: float = 0.25, min_crop: float = 0.08,
               eval_batch_size: int = 256, seed: int = 0, num_threads: int = 8, eval_every_epochs: int = 1):
    p = f"evals.{ctx.name}"
    self.ctx, self.prefix = ctx, p
    self.spec = common.FeatureSpec(ctx, encoder=encoder, feature="pooled", image_size=image_size,
                                   batch_size=eval_batch_size)
    if not 0 < layer_decay <= 1:
      raise ConfigError(f"{p}.layer_decay", layer_decay, "must be in (0, 1]")
    if not 0 <= drop_path < 1:
      raise ConfigError(f"{p}.drop_path", drop_path, "must be in [0, 1)")
    if epochs <= 0 or not 0 <= warmup_epochs < epochs:
      raise ConfigError(f"{p}.warmup_epochs", warmup_epochs, f"in [0, epochs={epochs})")
    if isinstance(eval_every_epochs, bool) or not isinstance(eval_every_epochs, int) or eval_every_epochs < 1:
      raise ConfigError(f"{p}.eval_every_epochs", eval_every_epochs, "an int >= 1 (MAE: 1)")
    if batch_size < 1 or batch_size % ctx.mesh.size:
      raise ConfigError(f"{p}.batch_size", batch_size, f"a positive multiple of the device count {ctx.mesh.size}")
    try:
      self.ra = augment.parse_rand_augment(rand_augment) if rand_augment else None
    except ValueError as e:
      raise ConfigError(f"{p}.rand_augment", rand_augment, str(e)) from None
    self.train_src, self.train_info = common.open_split(ctx, data, train_split, data_dir, mean, std, classes)
    self.val_src, self.val_info = common.open_split(ctx, data, split, data_dir, mean, std, classes)
    self.cfg = dict(epochs=epochs, warmup_epochs=warmup_epochs, batch_size=int(batch_size), blr=blr, min_lr=min_lr,
                    weight_decay=weight_decay, layer_decay=layer_decay, drop_path=drop_path, mixup=mixup,
                    cutmix=cutmix, switch=mixup_switch_prob, smoothing=label_smoothing, erasing=random_erasing,
                    min_crop=min_crop, seed=seed, num_threads=num_threads, eval_every=eval_every_epochs)

  # Model -----------------------------------------------------------------------------------------
  def _networks(self):
    encoder = self.ctx.encoder.module.clone(projector_depth=0, drop_path=self.cfg["drop_path"])
    return encoder, Head(self.train_info.num_classes)

  def _logits(self, encoder, head, params, images, key=None):
    patch = self.ctx.encoder.patch_size
    h, w = images.shape[1] // patch, images.shape[2] // patch
    patches = views.patchify(images, patch, 0)
    ids = jnp.broadcast_to(jnp.arange(patches.shape[1], dtype=jnp.int32), patches.shape[:2])
    keys = None if key is None else jax.random.split(key, images.shape[0])  # drop path per example
    out = encoder.apply({"params": params["encoder"]}, patches, ids, grid=(h, w), deterministic=key is None,
                        dropout_keys=keys)
    prefix = 1 if "cls" in out else 0
    return head.apply({"params": params["head"]}, out["pre_norm"][:, prefix:].mean(axis=1))

  def run(self, state):
    c, mesh = self.cfg, self.ctx.mesh
    encoder, head = self._networks()
    enc_params = self.spec.params(state)
    n = self.train_info.num_examples
    batch = c["batch_size"]
    per_epoch = max(n // batch, 1)
    total, warmup = int(math.ceil(c["epochs"] * per_epoch)), int(round(c["warmup_epochs"] * per_epoch))
    depth = encoder.depth
    peak = c["blr"] * batch / 256
    head_params = head.init(jax.random.key(c["seed"]), jnp.zeros((1, encoder.width)))["params"]
    params = {"encoder": jax.device_get(enc_params), "head": head_params}
    tx = optax.chain(
        optax.adamw(lambda s: schedule(s, peak=peak, total=total, warmup=warmup, min_lr=c["min_lr"]),
                    b1=0.9, b2=0.999, weight_decay=c["weight_decay"],
                    mask=lambda p: _tree_rule(p, decays)),
        _scale_by_tree(lr_scales(params, depth, c["layer_decay"])))
    abstract = jax.eval_shape(lambda p: (p, tx.init(p)), params)
    shard = sharding.tree_shardings(abstract, mesh, 4.0)
    params, opt_state = jax.jit(lambda p: (p, tx.init(p)), out_shardings=shard)(params)
    num_classes = self.train_info.num_classes
    batch_sh = sharding.batch_sharding(mesh)
    repl = sharding.replicated(mesh)

    def step(params, opt_state, images, labels, key):
      k_mix, k_drop = jax.random.split(key)
      x, target = mix(k_mix, images, labels, num_classes, mixup=c["mixup"], cutmix=c["cutmix"],
                      switch=c["switch"], smoothing=c["smoothing"])

      def loss_fn(p):
        logits = self._logits(encoder, head, p, x, k_drop)
        return -jnp.mean(jnp.sum(target * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1))
      loss, grads = jax.value_and_grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, loss

    step = jax.jit(step, in_shardings=(shard[0], shard[1], batch_sh, batch_sh, repl),
                   out_shardings=(shard[0], shard[1], repl), donate_argnums=(0, 1))
    stream = lmim_data.train_batches(
        self.train_src, self.train_info, image_size=self.spec.image_size, global_batch=batch, accum_steps=1,
        start_step=0, seed=c["seed"], min_crop=c["min_crop"], process_index=jax.process_index(),
        process_count=jax.process_count(), num_threads=c["num_threads"], prefetch=2,
        finetune=dict(rand_augment=self.ra, erasing=c["erasing"]))
    base = jax.random.key(c["seed"])
    losses, history = [], []
    for i in range(total):
      local = next(stream)
      g = sharding.global_batch({"image": local["image"][0], "label": local["label"][0]}, mesh)
      params, opt_state, loss = step(params, opt_state, g["image"], g["label"], jax.random.fold_in(base, i))
      losses.append(loss)
      epoch = -(-(i + 1) // per_epoch)  # 1-based epoch the step belongs to
      if i + 1 == total or ((i + 1) % per_epoch == 0 and epoch % c["eval_every"] == 0):
        top1, top5 = self._evaluate(encoder, head, params)
        history.append((epoch, top1, top5))
        logging.getLogger("lmim").info("%s: epoch %d top-1 %.2f top-5 %.2f", self.prefix, epoch, top1, top5)
    best_epoch, best1, _ = max(history, key=lambda h: (h[1], -h[0]))  # the first epoch reaching the max
    yield "top1", history[-1][1]
    yield "top5", history[-1][2]
    yield "top1_best", best1
    yield "best_epoch", float(best_epoch)
    yield "train_loss_last_epoch", float(np.mean(jax.device_get(losses[-per_epoch:])))

  def _evaluate(self, encoder, head, params):
    ctx = self.ctx
    fn = jax.jit(lambda p, x: self._logits(encoder, head, p, x), out_shardings=sharding.replicated(ctx.mesh))
    correct1 = correct5 = count = 0
    per_process = max(1, ctx.mesh.size // jax.process_count())
    for batch in lmim_data.eval_batches(self.val_src, self.val_info, image_size=self.spec.image_size,
                                        batch_size=self.spec.batch_size, process_index=jax.process_index(),
                                        process_count=jax.process_count()):
      batch = pad_rows({k: batch[k] for k in ("image", "label", "mask")}, per_process)
      g = sharding.global_batch(batch, ctx.mesh)
      logits = np.asarray(jax.device_get(fn(params, g["image"])))
      y = np.asarray(jax.device_get(replicate(g["label"], ctx.mesh)))
      keep = np.asarray(jax.device_get(replicate(g["mask"], ctx.mesh)))
      top5 = np.argsort(-logits, axis=1)[:, :5]
      correct1 += int((top5[keep, 0] == y[keep]).sum())
      correct5 += int((top5[keep] == y[keep, None]).any(1).sum())
      count += int(keep.sum())
    return 100.0 * correct1 / count, 100.0 * correct5 / count


def _tree_rule(params, rule):
  return jax.tree_util.tree_map_with_path(lambda p, x: rule(path_name(p), x.ndim), params)


def _scale_by_tree(scales):
  """Multiply each parameter's update by its layer-decay factor (the lr and its decoupled decay)."""
  def init(_):
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * s, updates, scales), state
  return optax.GradientTransformation(init, update)
