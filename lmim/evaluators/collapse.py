"""Collapse diagnostics on a frozen checkpoint: is the representation still using its dimensions?

Latent-target methods can collapse: every patch of an image (or every image) maps to the same
vector, the loss falls, and nothing useful is learnt (docs/methods.md §4f, docs/latent_mim.md §9.4–9.5).
Three views of that, on the evaluation split:

  Sim        mean pairwise cosine of the patch tokens of each image, averaged over images
                 Sim = mean_b mean_{p,q} cos(z_bp, z_bq)        diagonal p = q INCLUDED (official)
                 off = mean_b mean_{p≠q} cos(z_bp, z_bq)         Sim = 1/L + (L−1)/L · off
             on full images at gap 0 (every patch, the evaluation geometry), for the online
             encoder and, where the state holds one, the target encoder (EMA, or Latent MIM's
             `independent` target encoder), in two spaces:
                 sim_<enc>      after the projector ('projected'): the space Latent MIM's
                                losses and its logged Sims live in
                 sim_<enc>_ln   the patch tokens after the final LayerNorm, before the projector
             Sim ≈ 1 is collapse; random directions give Sim ≈ 1/L and off ≈ 0.
  method Sims  the training-time Sims the method itself logs (Latent MIM: sim_pred, sim_vis,
             sim_trg; post-projector, diagonal included, on its own masked views), recomputed by
             `method.loss` on evaluation images at the training geometry with views drawn from
             a fixed key, so two checkpoints are compared on the same views. A method that logs
             no Sim (MAE, CMAE) yields none.
  spread     of the L2-normalised pooled features `feature` (default: the official NN feature),
             one row per image, N = min(max_images, split size):
                 effective_rank   exp(H(p)), p = σ / Σσ over the singular values σ of the (N, D)
                                  matrix, not centred (Roy & Vetterli 2007; RankMe's convention):
                                  1 when every image maps to one vector, up to min(N, D)
                 feature_std      mean over dimensions of the per-dimension std over images,
                                  unscaled: ≈ 1/√D for directions spread over the sphere, → 0
                                  collapsed; feature_std_scaled = feature_std · √D (≈ 1 healthy,
                                  the scaling of Latent MIM's logged std_pred/std_trg)
             for the online encoder, and with suffix `_target` for the target encoder.

Yields sim_online, sim_online_offdiag, sim_online_ln, sim_online_ln_offdiag, effective_rank,
feature_std, feature_std_scaled; the same with `target` (sim_target, ..., effective_rank_target,
...) where a target encoder is in the state; and the method's own sim_* (not its `sim_target`,
which is the regulariser's goal s_t, not a measurement).

`encoder` ('online' or 'ema') names the encoder that must be in the state (a one-line error
otherwise; `python -m lmim.evaluate` restores the encoders its evaluators name); the metrics
cover every encoder the state holds. `max_images` images evenly spaced over the split are used (class-sorted splits such as
mnist5k's `test` then still cover every class).
"""
import dataclasses
import functools
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

from lmim import data as lmim_data
from lmim import inference, losses, sharding, views
from lmim.errors import ConfigError
from lmim.evaluators import common, features as feats_lib

log = logging.getLogger("lmim")

# Features with one vector per token; the spread statistics need one vector per image.
PATCH_FEATURES = ("patch_tokens", "patch_tokens_pre_norm")
# Metrics a method logs that are not Sims of its representations (the regulariser's target s_t).
_NOT_A_SIM = ("sim_target",)
# Columns of the packed per-image statistics before the pooled feature (see `_stats_fn`).
_SIM_COLUMNS = ("", "_offdiag", "_ln", "_ln_offdiag")


def sim_per_image(z):
  """(B, L, D) tokens -> (Sim (B,), off-diagonal Sim (B,)), cosine over token pairs of each image.

  Σ_{p,q} cos(z_p, z_q) = ‖Σ_p ẑ_p‖², so the Gram matrix is never formed (O(L·D) per image).
  Sim equals `losses.pairwise_sim_per_image` (the official diagonal-inclusive value); the
  off-diagonal value removes the L self-pairs, counted as Σ_p ‖ẑ_p‖² so that all-zero tokens
  (whose normalised vector is 0) are not counted as self-similar. NaN when L = 1.
  """
  zn = losses.l2_normalize(jnp.asarray(z, jnp.float32))
  num_tokens = zn.shape[1]
  total = jnp.sum(jnp.square(zn.sum(axis=1)), axis=-1)
  sim = total / num_tokens ** 2
  if num_tokens < 2:
    return sim, jnp.full_like(sim, jnp.nan)
  self_pairs = jnp.sum(jnp.square(zn), axis=(1, 2))
  return sim, (total - self_pairs) / (num_tokens * (num_tokens - 1))


def effective_rank(features) -> float:
  """exp of the Shannon entropy of the normalised singular values of an (N, D) matrix.

  Roy & Vetterli (2007): a soft count of the dimensions a set of vectors occupies. Computed on
  the matrix as given (not centred), so N copies of one vector have effective rank 1.
  """
  s = np.linalg.svd(np.asarray(features, np.float64), compute_uv=False)
  if s.sum() <= 0:
    return 0.0
  p = s / s.sum()
  p = p[p > 0]
  return float(np.exp(-np.sum(p * np.log(p))))


def feature_std(features) -> float:
  """Mean over dimensions of the std over rows of the L2-normalised (N, D) features (unscaled).

  Unit vectors spread evenly over the sphere have per-dimension std ≈ 1/√D; collapsed ones 0.
  """
  f = common.l2_normalize(np.asarray(features, np.float64))
  return float(f.std(axis=0).mean())


@dataclasses.dataclass(frozen=True)
class IndexedSubset:
  """Rows `indices` of a source, as a source (len, [i]); picklable for grain like its parent."""
  source: object
  indices: tuple

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[self.indices[i]]


def spread_indices(num_examples: int, count: int | None) -> tuple:
  """`count` example indices evenly spaced over a split (all of them when count is None)."""
  if count is None or count >= num_examples:
    return tuple(range(num_examples))
  return tuple(int(i) for i in np.unique(np.linspace(0, num_examples - 1, count).round().astype(np.int64)))


@functools.lru_cache(maxsize=16)
def _stats_fn(encoder, feature: str):
  """fn(encoder params, images) -> (B, 4 + D) float32, one row per image:
  [Sim, off-diagonal Sim] of the projected patch tokens, the same of the final-LN patch tokens,
  then the pooled `feature`. Packed into one array so one encoder pass, sharded by
  `lmim.inference.extract_fn`, yields everything; only O(B·D) leaves the device."""
  def fn(params, images):
    reps = encoder.encode(params, images)
    prefix = 1 if "cls" in reps else 0
    projected = reps["projected"][:, prefix:]
    columns = [*sim_per_image(projected), *sim_per_image(reps["patches"])]
    pooled = feats_lib.select(reps, feature).astype(jnp.float32)
    return jnp.concatenate([jnp.stack(columns, axis=1), pooled], axis=1)
  return fn


@functools.lru_cache(maxsize=16)
def _method_sims_fn(losses_view, mesh, names: tuple):
  """jit(fn(params, ema_params, images, index, seed, step) -> {name: scalar}): the method's own
  loss on a batch, its views drawn from per-example keys fold_in(key(seed), example index), so
  each image gets the same views whatever the batch layout or device count."""
  keys_of_views = lmim_data.image_keys(losses_view.num_views)

  def fn(params, ema_params, images, index, seed, step):
    batch = {k: images for k in keys_of_views}
    keys = views.example_keys(jax.random.key(seed), index)
    _, metrics = losses_view.loss(params, ema_params, batch, keys, step, train=False)  # no dropout
    return {k: metrics[k].astype(jnp.float32) for k in names}
  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def target_encoder_params(state):
  """The weights that produce the targets, where the state holds them: the EMA encoder, else
  Latent MIM's separately trained `independent` target encoder; None otherwise."""
  if state.ema_params is not None:
    return state.ema_params
  return (state.params or {}).get("target_encoder")


datasets = common.one_split


def encoders(fields: dict) -> set:
  """Both: Sims are reported for the online and the target (EMA) encoder, where there is one."""
  del fields
  return {"online", "ema"}


class Evaluator:
  """Sims, method-logged Sims, effective rank and feature spread (module docstring)."""

  def __init__(self, ctx, *, data: str, split: str, data_dir: str | None = None, mean=None, std=None, classes=None,
               batch_size: int = 256, image_size: int | None = None, resize: str = "center_crop",
               max_images: int | None = 10000, feature: str = "pooled_pre_norm", encoder: str = "online",
               seed: int = 0):
    prefix = f"evals.{ctx.name}"
    if feature in PATCH_FEATURES:
      raise ConfigError(f"{prefix}.feature", feature, "a pooled feature (one vector per image), e.g. "
                        "'pooled_pre_norm', 'pooled', 'cls' or 'block<k>'")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 2):
      raise ConfigError(f"{prefix}.max_images", max_images, "an int >= 2, or None for the whole split")
    self.ctx, self.seed, self.prefix = ctx, int(seed), prefix
    self.spec = common.FeatureSpec(ctx, encoder=encoder, feature=feature, image_size=image_size,
                                   resize=resize, batch_size=batch_size)
    source, self.info = common.open_split(ctx, data, split, data_dir, mean, std, classes)
    self.source = IndexedSubset(source, spread_indices(len(source), max_images))
    # What the method's loss needs from a state (shapes only; nothing is initialised).
    params, ema = jax.eval_shape(ctx.losses.init, jax.random.key(0))
    self._loss_param_keys, self._loss_needs_ema = frozenset(params), ema is not None
    self._reported = None  # the method's Sim names, found on the first run

  def _batches(self, source, image_size: int, batch_size: int):
    return lmim_data.eval_batches(source, self.info, image_size=image_size, batch_size=batch_size,
                                  resize=self.spec.resize, process_index=jax.process_index(),
                                  process_count=jax.process_count())

  def _encoder_stats(self, params, tag: str):
    """Sims and spread of one encoder -> {metric: value}."""
    fn = _stats_fn(self.ctx.encoder, self.spec.feature)
    batches = self._batches(self.source, self.spec.image_size, self.spec.batch_size)
    packed, _ = inference.extract_fn(fn, params, batches, self.ctx.mesh)
    sims = np.asarray(packed[:, :len(_SIM_COLUMNS)], np.float64).mean(axis=0)
    pooled = packed[:, len(_SIM_COLUMNS):]
    out = {f"sim_{tag}{col}": float(v) for col, v in zip(_SIM_COLUMNS, sims)}
    suffix = "" if tag == "online" else f"_{tag}"
    std = feature_std(pooled)
    out[f"effective_rank{suffix}"] = effective_rank(common.l2_normalize(pooled.astype(np.float64)))
    out[f"feature_std{suffix}"] = std
    out[f"feature_std_scaled{suffix}"] = std * math.sqrt(pooled.shape[1])
    return out

  def _reported_sims(self, state, batch_size: int, size: int) -> tuple:
    """The sim_* metrics `method.loss` returns, from its shapes alone (no compile, no compute)."""
    method = self.ctx.losses
    images = jax.ShapeDtypeStruct((batch_size, size, size, self.info.channels), jnp.float32)
    batch = {k: images for k in lmim_data.image_keys(method.num_views)}
    keys = jax.eval_shape(lambda: views.example_keys(jax.random.key(0), jnp.arange(batch_size)))
    reported = jax.eval_shape(lambda p, e, b, k: method.loss(p, e, b, k, 0, train=False)[1],
                              state.params, state.ema_params, batch, keys)
    return tuple(sorted(k for k in reported if k.startswith("sim_") and k not in _NOT_A_SIM))

  def _method_sims(self, state) -> dict:
    """The Sims `method.loss` logs, on evaluation images at the training geometry.

    Skipped (with a log line) when the state lacks weights the loss needs (an encoder-only
    checkpoint, or an EMA the harness did not restore) or no batch of whole loss groups fits.
    """
    method, mesh = self.ctx.losses, self.ctx.mesh
    missing = sorted(self._loss_param_keys - set(state.params or {}))
    if missing or (self._loss_needs_ema and state.ema_params is None):
      log.info("%s: no method Sims: the state lacks %s", self.prefix, missing or ["ema_params"])
      return {}
    unit = math.lcm(mesh.size, method.loss_group)
    size = method.train_image_size
    batch_size = min(self.spec.batch_size, len(self.source)) // unit * unit
    if batch_size == 0:
      log.info("%s: no method Sims: %d images do not fill one batch of a multiple of %d",
               self.prefix, len(self.source), unit)
      return {}
    if self._reported is None:
      self._reported = self._reported_sims(state, batch_size, size)
    names = self._reported
    if not names:
      return {}
    # Whole batches only: a padded row would enter the method's batch means.
    usable = IndexedSubset(self.source, tuple(range(len(self.source) // batch_size * batch_size)))
    fn = _method_sims_fn(method, mesh, names)
    seed, step = jnp.uint32(self.seed), jnp.int32(self.ctx.step)
    sums = dict.fromkeys(names, 0.0)
    count = 0
    for local in self._batches(usable, size, batch_size):
      g = sharding.global_batch({"image": local["image"], "index": local["index"].astype(np.int32)}, mesh)
      metrics = jax.device_get(fn(state.params, state.ema_params, g["image"], g["index"], seed, step))
      for k in names:
        sums[k] += float(metrics[k])
      count += 1
    return {k: v / count for k, v in sums.items()}

  def run(self, state):
    t0 = time.perf_counter()
    self.spec.params(state)  # the named encoder is there, or a one-line error before any work
    results = {}
    if state.params is not None:
      results.update(self._encoder_stats(state.params["encoder"], "online"))
    target = target_encoder_params(state)
    if target is not None:
      results.update(self._encoder_stats(target, "target"))
    results.update(self._method_sims(state))
    log.info("%s: %d images in %.1f s", self.prefix, len(self.source), time.perf_counter() - t0)
    yield from results.items()
