"""What feature-based evaluators share: which encoder, which representation, at which resolution.

Every probe choice that decides whether a number is comparable to a published one is a field
(docs/methods.md §4.0), validated here with one-line errors:
  encoder     'online' (the trained encoder) or 'ema' (the momentum target, where one exists)
  feature     see lmim.evaluators.features.FEATURES (official NN feature, CLS, pooled, block k)
  image_size  evaluation resolution (default: the encoder's g·p); any multiple of the patch size,
              position embeddings follow the grid
  resize      'center_crop' (Resize(size/0.875) + CenterCrop) or 'full' (squash)
"""
import logging
import time

import jax
import numpy as np

from lmim import data as lmim_data
from lmim.data.transforms import EVAL_RESIZES
from lmim.errors import ConfigError
from lmim.evaluators import features as feats_lib

ENCODERS = ("online", "ema")


def encoder_params(state, which: str, field: str = "encoder"):
  """The encoder weights an evaluator probes."""
  if which not in ENCODERS:
    raise ConfigError(field, which, "'online' (the trained encoder) or 'ema' (the momentum target)")
  if which == "ema":
    if state.ema_params is None:
      raise ConfigError(field, which, "'online': this run keeps no EMA encoder")
    return state.ema_params
  return state.params["encoder"]


def check_image_size(encoder, image_size, field: str) -> int:
  size = int(image_size or encoder.eval_image_size)
  if size < encoder.patch_size or size % encoder.patch_size:
    raise ConfigError(field, size, f"a multiple of the patch size {encoder.patch_size} "
                      f"(e.g. {encoder.eval_image_size})")
  return size


class FeatureSpec:
  """Validated probe choices plus the extraction itself."""

  def __init__(self, ctx, *, encoder="online", feature="pooled_pre_norm", image_size=None,
               resize="center_crop", batch_size=256):
    prefix = f"evals.{ctx.name}"
    if encoder not in ENCODERS:
      raise ConfigError(f"{prefix}.encoder", encoder, "'online' or 'ema'")
    if resize not in EVAL_RESIZES:
      raise ConfigError(f"{prefix}.resize", resize, f"one of {sorted(EVAL_RESIZES)}")
    if batch_size < 1:
      raise ConfigError(f"{prefix}.batch_size", batch_size, "must be >= 1")
    self.ctx, self.encoder, self.resize, self.batch_size = ctx, encoder, resize, int(batch_size)
    self.feature = feats_lib.check_feature(feature, field=f"{prefix}.feature",
                                           depth=ctx.encoder.depth)
    self.image_size = check_image_size(ctx.encoder, image_size, f"{prefix}.image_size")
    self.prefix = prefix

  def params(self, state):
    return encoder_params(state, self.encoder, f"{self.prefix}.encoder")

  def extract(self, state, source, info, *, feature=None, log=None):
    """Features of a whole split, sharded over the mesh -> (features (N, ...), labels (N,))."""
    batches = lmim_data.eval_batches(source, info, image_size=self.image_size, batch_size=self.batch_size,
                                     resize=self.resize, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    t0 = time.perf_counter()
    f, y = feats_lib.extract(self.ctx.encoder, self.params(state), batches, self.ctx.mesh,
                             feature or self.feature)
    seconds = max(time.perf_counter() - t0, 1e-9)
    (log or logging.getLogger("lmim").info)(
        f"{self.prefix}: {len(f)} images in {seconds:.1f} s ({len(f) / seconds:.1f} features/s)")
    return f, y


def one_split(fields: dict) -> list:
  """`datasets(fields)` of evaluators that read one split (`data`, `split`)."""
  return [(fields["data"], fields["split"], fields.get("data_dir"))]


def train_and_eval_splits(fields: dict) -> list:
  """`datasets(fields)` of evaluators that fit on `train_split` and score on `split`."""
  d = fields["data"]
  return [(d, fields.get("train_split", "train"), fields.get("data_dir")),
          (d, fields["split"], fields.get("data_dir"))]


def open_split(ctx, data: str, split: str, data_dir=None, mean=None, std=None, classes=None):
  """A dataset split for an evaluator (`classes`: a class subset, lmim.data.sources.read_class_spec);
  errors name this evaluator's fields."""
  return lmim_data.open_source(data, split, data_dir, mean=mean, std=std, classes=classes,
                               config_prefix=f"evals.{ctx.name}")


def l2_normalize(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
