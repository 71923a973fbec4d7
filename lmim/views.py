"""Views of an image for masked modelling, drawn on device (spec §4, §5).

Two independent random choices make a Latent MIM view:
- gap patch extraction: the image is a g×g grid of (p+gap)-pixel cells and each cell gives one
  p×p patch at a random offset in [0, gap) per axis. Neighbouring patches are therefore
  1..2·gap−1 pixels apart, which lowers the correlation between visible and target latents;
- the visible / target split: an argsort of uniform noise per image, first `num_vis` visible,
  the rest targets, both in that (random) order. Counts are Python ints, so shapes are static.

Every draw comes from a per-example key (see `example_keys`), so an example gets the same view
whatever the batch layout, device count or gradient-accumulation split. Offsets and shuffles can
also be injected, which is how the official fixtures are reproduced exactly.
"""
import jax
import jax.numpy as jnp


def example_keys(step_key, rows):
  """One key per example: fold the example's row in the global batch into the step key."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, rows)


def draw_shuffle(keys, num_patches: int):
  """(B,) keys -> (B, L) int32 permutations of patch ids (argsort of uniform noise)."""
  noise = jax.vmap(lambda k: jax.random.uniform(k, (num_patches,)))(keys)
  return jnp.argsort(noise, axis=1).astype(jnp.int32)


def draw_offsets(keys, grid_size: int, gap: int):
  """(B,) keys -> (B, g, g, 2) int32 (row, col) offsets of each patch inside its cell, in [0, gap)."""
  if gap == 0:
    return jnp.zeros((keys.shape[0], grid_size, grid_size, 2), jnp.int32)
  return jax.vmap(lambda k: jax.random.randint(k, (grid_size, grid_size, 2), 0, gap))(keys)


def draw_views(keys, *, grid_size: int, gap: int):
  """Independent streams for the split and the jitter, so changing gap keeps the same split."""
  split = jax.vmap(lambda k: jax.random.split(k, 2))(keys)
  return draw_shuffle(split[:, 0], grid_size * grid_size), draw_offsets(split[:, 1], grid_size, gap)


def patchify(images, patch_size: int, gap: int = 0, offsets=None):
  """images (B, H, W, C), H = W = g·(p+gap) -> patch vectors (B, g·g, p·p·C).

  Vector order is (row, col, channel), channel fastest; patch id = row·g + col (spec §4).
  `offsets` (B, g, g, 2) picks the p×p window inside each cell; ignored when gap == 0.
  """
  b, h, w, c = images.shape
  cell = patch_size + gap
  if h % cell or w % cell:
    raise ValueError(f"image {h}x{w} is not a grid of {cell}-pixel cells (patch {patch_size} + gap {gap})")
  gh, gw = h // cell, w // cell
  x = images.reshape(b, gh, cell, gw, cell, c).transpose(0, 1, 3, 2, 4, 5)  # (B, gh, gw, cell, cell, C)
  if gap > 0:
    ar = jnp.arange(patch_size)
    rows = offsets[..., 0, None] + ar                                   # (B, gh, gw, p)
    x = jnp.take_along_axis(x, rows[..., :, None, None], axis=3)      # (B, gh, gw, p, cell, C)
    cols = offsets[..., 1, None] + ar
    x = jnp.take_along_axis(x, cols[..., None, :, None], axis=4)      # (B, gh, gw, p, p, C)
  return x.reshape(b, gh * gw, patch_size * patch_size * c)


def gather_tokens(x, idx):
  """x (B, L, D), idx (B, K) -> (B, K, D)."""
  return jnp.take_along_axis(x, idx[..., None], axis=1)
