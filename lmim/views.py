"""Views of an image for masked modelling, drawn on device (docs/latent_mim.md §4, §5).

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
import chex
import jax
import jax.numpy as jnp


def example_keys(step_key, rows):
  """One key per example: fold the example's row in the global batch into the step key."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(step_key, rows)


# Stream tag folded into the example keys for dropout and drop path (view draws split or fold the
# keys with small integers, so this large constant never coincides with them).
DROPOUT_STREAM = 0x64726F70  # b"drop"


def dropout_keys(keys):
  """(B,) example keys -> (B,) keys for the networks' dropout and drop path (lmim.models.layers)."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, DROPOUT_STREAM)


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

  Vector order is (row, col, channel), channel fastest; patch id = row·g + col (docs/latent_mim.md §4).
  `offsets` (B, g, g, 2) picks the p×p window inside each cell; ignored when gap == 0.
  """
  chex.assert_rank(images, 4)
  b, h, w, c = images.shape
  cell = patch_size + gap
  if h % cell or w % cell:
    raise ValueError(f"image {h}x{w} is not a grid of {cell}-pixel cells (patch {patch_size} + gap {gap})")
  gh, gw = h // cell, w // cell
  x = images.reshape(b, gh, cell, gw, cell, c).transpose(0, 1, 3, 2, 4, 5)  # (B, gh, gw, cell, cell, C)
  if gap > 0:
    chex.assert_shape(offsets, (b, gh, gw, 2))
    ar = jnp.arange(patch_size)
    rows = offsets[..., 0, None] + ar                                   # (B, gh, gw, p)
    x = jnp.take_along_axis(x, rows[..., :, None, None], axis=3)      # (B, gh, gw, p, cell, C)
    cols = offsets[..., 1, None] + ar
    x = jnp.take_along_axis(x, cols[..., None, :, None], axis=4)      # (B, gh, gw, p, p, C)
  return x.reshape(b, gh * gw, patch_size * patch_size * c)


def gather_tokens(x, idx):
  """x (B, L, D), idx (B, K) -> (B, K, D)."""
  chex.assert_rank([x, idx], [3, 2])
  chex.assert_equal_shape_prefix([x, idx], 1)
  return jnp.take_along_axis(x, idx[..., None], axis=1)


def block_mask(keys, *, grid_size: int, num_mask: int, min_block: int = 16, max_aspect: float = 1 / 0.3,
               proposals: int = 128):
  """BEiT's block-wise mask generator on device: (B,) keys -> (B, g·g) bool, True = masked.

  Rectangles of at least `min_block` patches and aspect ratio in [1/max_aspect, max_aspect] are
  added until `num_mask` patches are masked, each block adding at most the remaining budget; ten
  rejected proposals in a row end the image early (BEiT's rule), so counts can fall short.
  Shapes are static: the mask is a boolean grid, not an index list.
  """
  g = grid_size
  rows = jnp.arange(g)[:, None]
  cols = jnp.arange(g)[None, :]
  lo, hi = jnp.log(1.0 / max_aspect), jnp.log(max_aspect)

  def one(key):
    def step(i, carry):
      mask, count, fails = carry
      k = jax.random.split(jax.random.fold_in(key, i), 4)
      remaining = num_mask - count
      a, b = jnp.minimum(min_block, remaining), jnp.maximum(min_block, remaining)
      area = jax.random.uniform(k[0], minval=a, maxval=b)
      aspect = jnp.exp(jax.random.uniform(k[1], minval=lo, maxval=hi))
      h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
      w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
      top = jax.random.randint(k[2], (), 0, jnp.maximum(g - h + 1, 1))
      left = jax.random.randint(k[3], (), 0, jnp.maximum(g - w + 1, 1))
      block = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
      delta = jnp.sum(block & ~mask)
      live = (count < num_mask) & (fails < 10)
      ok = live & (h < g) & (w < g) & (delta > 0) & (delta <= remaining)
      return (jnp.where(ok, mask | block, mask), count + jnp.where(ok, delta, 0),
              jnp.where(ok, 0, fails + live.astype(jnp.int32)))
    mask, _, _ = jax.lax.fori_loop(0, proposals, step, (jnp.zeros((g, g), bool), 0, 0))
    return mask.reshape(-1)
  return jax.vmap(one)(keys)


def block_ids(top, left, h: int, w: int, grid_size: int):
  """Patch ids of an h×w block at (top, left), in raster order: (h·w,) int32."""
  r = top + jnp.arange(h)[:, None]
  c = left + jnp.arange(w)[None, :]
  return (r * grid_size + c).reshape(-1).astype(jnp.int32)


def random_block(key, *, grid_size: int, scale, aspect):
  """One rectangle of the grid as a (g, g) bool mask: area ~ U(scale)·g², aspect ~ U(aspect)
  (I-JEPA's `_sample_block_size`: sides rounded, then shrunk until they fit), position uniform."""
  g = grid_size
  k = jax.random.split(key, 4)
  area = jax.random.uniform(k[0], minval=scale[0], maxval=scale[1]) * g * g
  ar = jax.random.uniform(k[1], minval=aspect[0], maxval=aspect[1])
  h = jnp.clip(jnp.round(jnp.sqrt(area * ar)).astype(jnp.int32), 1, g - 1 if g > 1 else 1)
  w = jnp.clip(jnp.round(jnp.sqrt(area / ar)).astype(jnp.int32), 1, g - 1 if g > 1 else 1)
  top = jax.random.randint(k[2], (), 0, g - h + 1)
  left = jax.random.randint(k[3], (), 0, g - w + 1)
  rows, cols = jnp.arange(g)[:, None], jnp.arange(g)[None, :]
  return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def first_ids(mask, k: int):
  """(..., L) bool -> the first k True positions in raster order (..., k) and which are real.

  Static-shape stand-in for I-JEPA's truncation of every mask to the batch-minimum length:
  rows with more than k True entries keep their first k; rows with fewer are padded (valid=False).
  """
  order = jnp.argsort(~mask, axis=-1, stable=True)[..., :k].astype(jnp.int32)
  valid = jnp.take_along_axis(mask, order, axis=-1)
  return order, valid
