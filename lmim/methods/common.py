"""Pieces several methods share: EMA updates, full-image encoding for probes, init and dropout helpers."""
import jax
import jax.numpy as jnp

from lmim import views


def dropout_keys_for(networks, keys, train: bool):
  """Per-example keys for the networks' drop path / dropout when training and any of `networks`
  has some (else None: every network runs deterministically)."""
  if train and any(getattr(n, "has_dropout", False) for n in networks):
    return views.dropout_keys(keys)
  return None


def run(module, params, *args, dropout_keys=None, **kwargs):
  """module.apply in training mode when `dropout_keys` (B,) are given, deterministic otherwise."""
  return module.apply({"params": params}, *args, deterministic=dropout_keys is None, dropout_keys=dropout_keys,
                      **kwargs)


def ema_update(target, online, momentum):
  """θ_T·m + θ_O·(1−m), leaf by leaf (the official Latent MIM operation order)."""
  return jax.tree.map(lambda t, o: t * momentum + o * (1.0 - momentum), target, online)


def encode_full_images(encoder, params, images, patch_size: int, positions: str = "extrapolate"):
  """Full images at gap 0, every patch in grid order -> the encoder's named representations.

  This is the evaluation geometry of every method (the official NN evaluation uses it). Any
  image size divisible by the patch size works (position embeddings follow the grid, e.g.
  DAVIS's 480×832 frames give a 30×52 grid); `out['grid']` is (gh, gw). `positions`
  ('extrapolate' | 'interpolate') says how another grid's position table is made
  (lmim.models.vit.position_embeddings).
  """
  h, w = images.shape[1] // patch_size, images.shape[2] // patch_size
  patches = views.patchify(images, patch_size, 0)
  ids = jnp.broadcast_to(jnp.arange(patches.shape[1], dtype=jnp.int32), patches.shape[:2])
  out = encoder.apply({"params": params}, patches, ids, grid=(h, w), positions=positions)
  return dict(out, grid=(h, w))


def init_encoder(encoder, key, num_tokens: int, patch_dim: int):
  """Encoder parameters from a dummy input of `num_tokens` patches of `patch_dim` values."""
  ids = jnp.arange(num_tokens, dtype=jnp.int32)[None]
  return encoder.init(key, jnp.zeros((1, num_tokens, patch_dim), jnp.float32), ids)["params"]
