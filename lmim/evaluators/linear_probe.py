"""Linear probe, MAE's recipe (docs/methods.md §4b): BatchNorm without affine + one linear layer on
frozen features, LARS, cosine schedule with linear warmup.

    head      BN(D, affine=False, eps 1e-6) → Linear(D, C), weight ~ trunc-normal(0.01), bias 0
    optimiser LARS (momentum 0.9, trust coefficient 0.001, weight decay 0; trust scaling and decay
              only on the weight), lr = blr · batch / 256 (blr 0.1), 90 epochs, 10 warmup from 0
    batchnorm `bn_batch`: the batch the statistics are taken over. MAE's BatchNorm is per GPU (no
              SyncBN): 512 of the global 16,384, and DDP broadcasts rank 0's running statistics;
              bn_batch=512 does exactly that (statistics per group of 512 rows, running statistics
              from the first group). None: the whole batch.
    data      `augment=True`: MAE's train view (RandomResizedCrop(min_crop, 1) + flip; `crop_style`
              'tf' is MAE's util/crop.py, what its linear probe uses) encoded on the fly every step,
              `encode_batch_size` images at a time (a 16,384 batch never sits on the host: only its
              features are gathered); `augment=False`: features of the eval view extracted once and
              cached (much cheaper, slightly different numbers — the choice is recorded with the result)
Several learning rates are swept in the same pass: one head per rate on the same features (the
BatchNorm statistics depend only on the features and are shared). With more than one rate, a
`holdout` fraction of the train split (random, fixed by `seed`) is left out of training and the
rate is chosen on it, never on the evaluation split: `top1` is the chosen head's accuracy on the
evaluation split, `best_blr` its rate, `holdout_top1_blr<r>` and `top1_blr<r>` every head's. A
chosen rate at either end of the grid is logged as a warning: the optimum may lie outside it.
"""
import functools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np

from lmim import data as lmim_data
from lmim import inference, sharding
from lmim.errors import ConfigError
from lmim.evaluators import common, features as feats_lib
from lmim.evaluators.collapse import IndexedSubset

log = logging.getLogger("lmim")


def lr_at(step, *, total: int, warmup: int):
  """MAE's schedule as a factor of the peak: linear from 0 over `warmup`, half-cycle cosine to 0."""
  step = jnp.asarray(step, jnp.float32)
  warm = step / max(warmup, 1)
  cos = 0.5 * (1.0 + jnp.cos(jnp.pi * (step - warmup) / max(total - warmup, 1)))
  return jnp.where(step < warmup, warm, cos)


def init_heads(key, num_heads: int, dim: int, num_classes: int):
  w = jax.random.truncated_normal(key, -2.0, 2.0, (num_heads, dim, num_classes)) * 0.01
  zeros = lambda *s: jnp.zeros(s, jnp.float32)
  return dict(w=w, b=zeros(num_heads, num_classes), mw=jnp.zeros_like(w), mb=zeros(num_heads, num_classes),
              mean=zeros(dim), var=jnp.ones((dim,), jnp.float32))


def _bn(x, mean, var, eps):
  return (x - mean) / jnp.sqrt(var + eps)


def batch_norm_groups(x, eps: float, bn_batch: int | None):
  """Training-mode BatchNorm (no affine) over groups of `bn_batch` rows (None: the whole batch)
  -> (normalised x, the first group's mean, its biased variance, its size)."""
  n, d = x.shape
  g = n if bn_batch is None or bn_batch >= n or n % bn_batch else bn_batch
  xr = x.reshape(n // g, g, d)
  mu, var = xr.mean(1, keepdims=True), xr.var(1, keepdims=True)
  return ((xr - mu) / jnp.sqrt(var + eps)).reshape(n, d), mu[0, 0], var[0, 0], g


@functools.partial(jax.jit, static_argnames=("eps", "momentum", "trust", "wd", "bn_batch"), donate_argnums=(0,))
def train_step(state, x, y, lrs, *, eps, momentum, trust, wd, bn_batch=None):
  """One LARS step of every head on a batch of frozen features x (B, D), labels y (B,)."""
  xn, mu, var, n = batch_norm_groups(x, eps, bn_batch)

  def loss(w, b):
    logits = jnp.einsum("bd,hdc->hbc", xn, w) + b[:, None]
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, jnp.broadcast_to(y[None, :, None], logp.shape[:2] + (1,)), -1).mean(1).sum()

  gw, gb = jax.grad(loss, argnums=(0, 1))(state["w"], state["b"])
  dw = gw + wd * state["w"]
  pn = jnp.linalg.norm(state["w"].reshape(len(lrs), -1), axis=1)
  un = jnp.linalg.norm(dw.reshape(len(lrs), -1), axis=1)
  q = jnp.where((pn > 0) & (un > 0), trust * pn / jnp.maximum(un, 1e-30), 1.0)
  mw = momentum * state["mw"] + dw * q[:, None, None]
  mb = momentum * state["mb"] + gb
  return dict(w=state["w"] - lrs[:, None, None] * mw, b=state["b"] - lrs[:, None] * mb, mw=mw, mb=mb,
              # torch BatchNorm1d: running stats with momentum 0.1 and the unbiased batch variance
              mean=0.9 * state["mean"] + 0.1 * mu, var=0.9 * state["var"] + 0.1 * var * n / max(n - 1, 1))


@functools.partial(jax.jit, static_argnames=("eps",))
def predict(state, x, *, eps):
  xn = _bn(x, state["mean"], state["var"], eps)
  return jnp.argmax(jnp.einsum("bd,hdc->hbc", xn, state["w"]) + state["b"][:, None], axis=-1)


datasets = common.train_and_eval_splits


def edge_of_grid(values, best: int) -> str | None:
  """'smallest'/'largest' when index `best` of a swept grid is at its lower/upper end, else None
  (a single value is no sweep)."""
  if len(values) < 2:
    return None
  order = np.argsort(values)
  return "smallest" if best == order[0] else "largest" if best == order[-1] else None


class Evaluator:
  def __init__(self, ctx, *, data: str, split: str, train_split: str = "train", data_dir=None,
               mean=None, std=None, classes=None, encoder: str = "online", feature: str = "cls", image_size=None,
               resize: str = "center_crop", epochs: float = 90, warmup_epochs: float = 10,
               batch_size: int = 16384, blrs=(0.1,), momentum: float = 0.9, weight_decay: float = 0.0,
               trust_coefficient: float = 0.001, bn_eps: float = 1e-6, augment: bool = False,
               min_crop: float = 0.08, extract_batch_size: int = 256, seed: int = 0, bn_batch=None,
               crop_style: str = "torchvision", encode_batch_size: int = 1024, holdout: float = 0.05):
    p = self.prefix = f"evals.{ctx.name}"
    if bn_batch is not None and (isinstance(bn_batch, bool) or not isinstance(bn_batch, int) or bn_batch < 2):
      raise ConfigError(f"{p}.bn_batch", bn_batch, "None (the whole batch) or an int >= 2 (MAE: 512)")
    if crop_style not in ("torchvision", "tf"):
      raise ConfigError(f"{p}.crop_style", crop_style, "'torchvision' or 'tf' (MAE's linear probe)")
    if isinstance(encode_batch_size, bool) or not isinstance(encode_batch_size, int) or encode_batch_size < 1:
      raise ConfigError(f"{p}.encode_batch_size", encode_batch_size, "an int >= 1")
    if not 0 <= holdout < 0.5:
      raise ConfigError(f"{p}.holdout", holdout, "a fraction of train in [0, 0.5) (> 0 to choose among blrs)")
    self.blrs = tuple(float(b) for b in (blrs if isinstance(blrs, (tuple, list)) else (blrs,)))
    if not self.blrs or min(self.blrs) <= 0:
      raise ConfigError(f"{p}.blrs", blrs, "one or more base learning rates > 0")
    if epochs <= 0 or not 0 <= warmup_epochs < epochs:
      raise ConfigError(f"{p}.warmup_epochs", warmup_epochs, f"in [0, epochs={epochs})")
    if batch_size < 1:
      raise ConfigError(f"{p}.batch_size", batch_size, "must be >= 1")
    self.ctx = ctx
    self.spec = common.FeatureSpec(ctx, encoder=encoder, feature=feature, image_size=image_size,
                                   resize=resize, batch_size=extract_batch_size)
    if self.spec.feature.startswith("patch_tokens"):
      raise ConfigError(f"{p}.feature", feature, "a pooled feature (cls, pooled, pooled_pre_norm, block<k>)")
    self.train_src, self.train_info = common.open_split(ctx, data, train_split, data_dir, mean, std, classes)
    self.val_src, self.val_info = common.open_split(ctx, data, split, data_dir, mean, std, classes)
    self.epochs, self.warmup_epochs, self.batch_size = epochs, warmup_epochs, int(batch_size)
    self.opt = dict(eps=float(bn_eps), momentum=float(momentum), trust=float(trust_coefficient),
                    wd=float(weight_decay))
    self.augment, self.min_crop, self.seed = augment, min_crop, seed
    self.bn_batch, self.crop_style, self.encode_batch_size = bn_batch, crop_style, encode_batch_size
    if len(self.blrs) > 1 and holdout <= 0:
      raise ConfigError(f"{p}.holdout", holdout, f"> 0: {len(self.blrs)} blrs are chosen among on a held-out "
                        "part of train, never on the evaluation split")
    self.holdout_rows = None
    if len(self.blrs) > 1:
      n = self.train_info.num_examples
      rows = np.random.default_rng(self.seed).permutation(n)[:max(1, int(round(holdout * n)))]
      self.holdout_rows = np.sort(rows)
      self.train_rows = np.setdiff1d(np.arange(n), self.holdout_rows)
    else:
      self.train_rows = np.arange(self.train_info.num_examples)

  def _batches(self, state, steps: int, batch: int):
    """(features, labels) per step: cached eval-view features, or train views encoded on the fly."""
    train = IndexedSubset(self.train_src, tuple(int(i) for i in self.train_rows))
    if not self.augment:
      x, y = self.spec.extract(state, train, self.train_info)
      rng = np.random.default_rng(self.seed)
      per_epoch = max(len(x) // batch, 1)
      for step in range(steps):
        if step % per_epoch == 0:
          order = rng.permutation(len(x))
        idx = order[(step % per_epoch) * batch:(step % per_epoch + 1) * batch]
        yield jnp.asarray(x[idx]), jnp.asarray(y[idx])
      return
    mesh = self.ctx.mesh
    encode = inference.jitted(feats_lib.feature_fn(self.ctx.encoder, self.spec.feature), mesh)
    micro = micro_batch(batch, self.encode_batch_size, mesh.size, jax.process_count())
    # The stream is read `micro` images at a time: one step's images are never all on the host.
    stream = lmim_data.train_batches(
        train, self.train_info, image_size=self.spec.image_size, global_batch=micro,
        accum_steps=1, start_step=0, seed=self.seed, min_crop=self.min_crop, flip=True,
        process_index=jax.process_index(), process_count=jax.process_count(), num_threads=4, prefetch=2,
        crop_style=self.crop_style)
    params = self.spec.params(state)
    for _ in range(steps):
      xs, ys = [], []
      for _ in range(batch // micro):
        local = next(stream)
        g = sharding.global_batch({"image": local["image"][0], "label": local["label"][0]}, mesh)
        xs.append(encode(params, g["image"]))
        ys.append(inference.replicate(g["label"], mesh))
      yield jnp.concatenate(xs), jnp.concatenate(ys)

  def run(self, state):
    n = len(self.train_rows)
    batch = min(self.batch_size, n)
    per_epoch = max(n // batch, 1)
    total, warmup = int(math.ceil(self.epochs * per_epoch)), int(round(self.warmup_epochs * per_epoch))
    lrs = jnp.asarray([b * batch / 256 for b in self.blrs], jnp.float32)
    num_classes = self.train_info.num_classes
    head = None
    for step, (x, y) in enumerate(self._batches(state, total, batch)):
      if head is None:
        head = init_heads(jax.random.key(self.seed), len(self.blrs), x.shape[-1], num_classes)
      head = train_step(head, x.astype(jnp.float32), y.astype(jnp.int32), lrs * lr_at(step, total=total, warmup=warmup),
                        bn_batch=self.bn_batch, **self.opt)
    accs = self._accuracies(state, head, self.val_src, self.val_info)
    for blr, acc in zip(self.blrs, accs):
      yield f"top1_blr{blr:g}", acc
    best = 0
    if self.holdout_rows is not None:
      held = IndexedSubset(self.train_src, tuple(int(i) for i in self.holdout_rows))
      held_accs = self._accuracies(state, head, held, self.train_info)
      for blr, acc in zip(self.blrs, held_accs):
        yield f"holdout_top1_blr{blr:g}", acc
      best = int(np.argmax(held_accs))  # ties: the first rate listed
    edge = edge_of_grid(self.blrs, best)
    if edge:
      log.warning("%s: the best base learning rate, %g, is the %s of blrs %s; the best may lie "
                  "beyond the grid: extend it (--config.%s.blrs=...)", self.prefix,
                  self.blrs[best], edge, tuple(self.blrs), self.prefix)
    yield "top1", accs[best]
    yield "best_blr", self.blrs[best]

  def _accuracies(self, state, head, source, info) -> list:
    x, y = self.spec.extract(state, source, info)
    preds = np.asarray(predict(head, jnp.asarray(x, jnp.float32), eps=self.opt["eps"]))
    return [100.0 * float(np.mean(p == y)) for p in preds]


def micro_batch(batch: int, wanted: int, devices: int, processes: int) -> int:
  """The largest divisor of `batch` that is at most `wanted` (at least the device count) and splits
  evenly over devices and processes: the images encoded per call in the augmented probe."""
  step = math.lcm(devices, processes)
  for m in range(min(batch, max(wanted, step)), 0, -1):
    if batch % m == 0 and m % step == 0:
      return m
  return batch
