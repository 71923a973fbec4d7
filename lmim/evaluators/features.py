"""Frozen-encoder features for evaluation, extracted sharded over the mesh.

Feature names (the choice decides whether numbers are comparable; docs/methods.md §4.0):
  pooled_pre_norm  mean of patch tokens of the last block, before the final LayerNorm, without
                   the projector: the official Latent MIM NN feature
  pooled           mean of patch tokens after the final LayerNorm (MAE fine-tuning's pooling)
  cls              CLS token after the final LayerNorm (DINO kNN, MAE linear probe)
  block<k>         mean of patch tokens after block k (1-based), no final LayerNorm
  cls_block<k>     CLS token after block k
  patch_tokens     every patch token after the final LayerNorm, (B, L, D) (DINO's DAVIS feature)
  patch_tokens_pre_norm  every patch token of the last block, before the final LayerNorm
  pixels           no encoder: the evaluation image itself (normalised, flattened), minus its
                   mean over the split — the raw-pixel baseline, measured by the same protocol
Images are evaluated at gap 0 (a contiguous grid), as the official evaluation does.
"""
import functools
import re

import jax.numpy as jnp

from lmim.errors import ConfigError
from lmim.inference import extract_fn

FEATURES = ("pooled_pre_norm", "pooled", "cls", "block<k>", "cls_block<k>", "patch_tokens",
            "patch_tokens_pre_norm", "pixels")


def select(reps: dict, feature: str):
  prefix = 1 if "cls" in reps else 0  # I-JEPA encoders have no CLS token
  if feature == "pooled_pre_norm":
    return reps["pre_norm"][:, prefix:].mean(axis=1)
  if feature == "pooled":
    return reps["patches"].mean(axis=1)
  if feature == "patch_tokens":
    return reps["patches"]
  if feature == "patch_tokens_pre_norm":
    return reps["pre_norm"][:, prefix:]
  if feature == "cls" or feature.startswith("cls_block"):
    if "cls" not in reps:
      raise ConfigError("feature", feature, "a patch feature ('pooled', 'pooled_pre_norm', 'block<k>'): "
                        "this encoder has no CLS token")
    if feature == "cls":
      return reps["cls"]
    return reps["blocks"][int(feature[len("cls_block"):]) - 1][:, 0]
  m = re.fullmatch(r"block(\d+)", feature)
  if m:
    return reps["blocks"][int(m.group(1)) - 1][:, prefix:].mean(axis=1)
  raise ConfigError("feature", feature, f"one of {list(FEATURES)}")


def check_feature(feature: str, field: str = "feature", depth: int | None = None) -> str:
  m = re.fullmatch(r"(cls_)?block(\d+)", str(feature))
  if m:
    k = int(m.group(2))
    if depth is not None and not 1 <= k <= depth:
      raise ConfigError(field, feature, f"block index in [1, {depth}] (the encoder depth)")
    return feature
  if feature not in FEATURES:
    raise ConfigError(field, feature, f"one of {list(FEATURES)}")
  return feature


def pixels(params, images):
  """The raw-pixel 'feature': the evaluation images flattened (no encoder)."""
  del params
  return images.reshape(images.shape[0], -1).astype(jnp.float32)


@functools.lru_cache(maxsize=16)
def feature_fn(encoder, feature: str):
  """fn(params, images) -> the feature (B, ...) float32, for an encoder view."""
  if feature == "pixels":
    return pixels

  def fn(params, images):
    return select(encoder.encode(params, images), feature).astype(jnp.float32)
  return fn


def extract(encoder, encoder_params, batches, mesh, feature: str = "pooled_pre_norm"):
  """Run the encoder over an eval stream -> (features (N, D) float32, labels (N,)) on the host.

  `batches` yields process-local {'image', 'label', 'mask'}; padded rows (mask False) are
  dropped, so every process can run the same number of steps on a padded stream.
  """
  out, labels = extract_fn(feature_fn(encoder, check_feature(feature)), encoder_params, batches, mesh)
  if feature == "pixels":  # centred over the split, so cosine similarity compares deviations
    out = out - out.mean(axis=0, keepdims=True)
  return out, labels
