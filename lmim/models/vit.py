"""ViT encoder of Latent MIM (docs/latent_mim.md §6): online and target encoders share this module.

The encoder consumes an arbitrary subset of a g×g grid of patch vectors, together with the
patch ids (pid = row·g + col) that place them on the grid. Position embeddings index the grid
cell, so the gap jitter of §4 is invisible to them.

`Encoder.__call__` returns a dict of named representations (big_vision style) so probes pick
one by name:
  pre_norm  (B, 1+L, D)  last block output, before the final LayerNorm (official NN feature source)
  encoded   (B, 1+L, D)  after the final LayerNorm
  projected (B, 1+L, D)  after the projector MLP (== encoded when the projector has depth 0);
                         this is the space where Latent MIM's targets, decoder input and Sim live.
"""
import re
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from lmim.models import layers
from lmim.models.posemb import interpolate_table, sincos_table

# width, depth, heads (official CFG; ViT-H uses 14-px patches).
VARIANTS = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


def parse_variant(variant: str) -> tuple[int, int, int, int | None]:
  """'B/16' -> (768, 12, 12, 16); 'B' -> (768, 12, 12, None). Raises ValueError if unknown."""
  m = re.fullmatch(r"(Ti|S|B|L|H)(?:/(\d+))?", str(variant))
  if not m:
    raise ValueError(variant)
  width, depth, heads = VARIANTS[m.group(1)]
  return width, depth, heads, (int(m.group(2)) if m.group(2) else None)


POSITIONS = ("extrapolate", "interpolate")


def position_embeddings(module: nn.Module, width: int, grid_size: int, frozen: bool, style: str = "lmim",
                        grid: tuple[int, int] | None = None, positions: str = "extrapolate"):
  """The (1+gh·gw, width) table for a (gh, gw) grid (default: the training grid g×g).

  positions='extrapolate': frozen sin-cos tables are recomputed for another grid with the same
  per-axis rule (a larger grid reaches coordinates never seen in training); a learned table
  (freeze_pe=False) is a parameter on the training grid, resized bicubically to another grid (the
  usual practice for fine-tuning at a new resolution). positions='interpolate': either table,
  as trained on the g×g grid, resized the way DINO's `interpolate_pos_encoding` does
  (posemb.interpolate_table), so every position stays within the trained coordinate range.
  """
  gh, gw = grid or (grid_size, grid_size)
  if positions not in POSITIONS:
    raise ValueError(f"positions={positions!r}: one of {POSITIONS}")
  if frozen and positions == "interpolate":
    return interpolate_table(jnp.asarray(sincos_table(width, grid_size, style)), grid_size, (gh, gw))
  if frozen:
    return jnp.asarray(sincos_table(width, gh, style, gw))
  # The name contains "embed", so the official rule exempts it from weight decay.
  table = module.param("pos_embed", lambda *_: jnp.asarray(sincos_table(width, grid_size, style)))
  if positions == "interpolate":
    return interpolate_table(table, grid_size, (gh, gw))
  if (gh, gw) == (grid_size, grid_size):
    return table
  cells = jax.image.resize(table[1:].reshape(grid_size, grid_size, width), (gh, gw, width), "bicubic")
  return jnp.concatenate([table[:1], cells.reshape(gh * gw, width)], axis=0)


def gather_positions(table, patch_ids, with_cls: bool):
  """Rows of the table for patch ids (B, L) -> (B, L, D); with_cls prepends row 0 (zeros)."""
  rows = patch_ids + 1
  if with_cls:
    rows = jnp.pad(rows, ((0, 0), (1, 0)))
  return table[rows]


class Projector(nn.Module):
  """The latent projector (docs/latent_mim.md §6.1.6): [Linear(no bias) -> LN(eps 1e-5) -> GELU]
  x (depth-1), then Linear(no bias) -> LN. Applied to every token, CLS included."""
  hidden: int
  depth: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    out_dim = x.shape[-1]
    for l in range(self.depth):
      last = l == self.depth - 1
      x = layers.dense(out_dim if last else self.hidden, f"linear{l}", self.dtype, use_bias=False)(x)
      x = layers.layer_norm(f"norm{l}", eps=1e-5)(x)  # plain nn.LayerNorm in the official code
      if not last:
        x = layers.gelu(x)
    return x


class PatchEmbed(nn.Module):
  """Linear embedding of flattened (row, col, channel) patch vectors (not a conv)."""
  width: int
  dtype: Any = jnp.float32
  init_style: str = "xavier"

  @nn.compact
  def __call__(self, patches):
    return layers.dense(self.width, "proj", self.dtype, init=self.init_style)(patches)


def relative_position_index(rows, cols, span_w: int, num_relative: int, with_cls: bool):
  """BEiT's index into the relative-position table for tokens at grid cells (rows, cols) (..., L):
  (dr + S_h−1)·(2·S_w−1) + (dc + S_w−1) between patches; with CLS, three extra entries after the
  (2S_h−1)(2S_w−1) relative positions: CLS→patch, patch→CLS, CLS→CLS. -> (..., [1+]L, [1+]L)."""
  dr = rows[..., :, None] - rows[..., None, :]
  dc = cols[..., :, None] - cols[..., None, :]
  span_h = (num_relative // (2 * span_w - 1) + 1) // 2
  idx = (dr + span_h - 1) * (2 * span_w - 1) + (dc + span_w - 1)
  if not with_cls:
    return idx
  idx = jnp.pad(idx, [(0, 0)] * (idx.ndim - 2) + [(1, 0), (1, 0)])
  idx = idx.at[..., 0, :].set(num_relative)          # CLS query -> patch keys
  idx = idx.at[..., :, 0].set(num_relative + 1)      # patch queries -> CLS key
  return idx.at[..., 0, 0].set(num_relative + 2)     # CLS -> CLS


class RelativePositionBias(nn.Module):
  """BEiT's relative position bias, one table shared by every block (data2vec's
  `--rel_pos_bias`): ((2g−1)² + 3, H), zeros at init; -> a (B or 1, H, [1+]L, [1+]L) logit bias.

  On another grid (evaluation at another resolution) the (2g−1)×(2g−1) part of the table is resized
  bicubically to the new spans, as BEiT does when it changes resolution."""
  grid_size: int
  num_heads: int

  @nn.compact
  def __call__(self, patch_ids, with_cls: bool, grid=None):
    g = self.grid_size
    num_relative = (2 * g - 1) ** 2
    table = self.param("table", nn.initializers.zeros, (num_relative + 3, self.num_heads))
    gh, gw = grid or (g, g)
    if (gh, gw) != (g, g):
      rel = jax.image.resize(table[:num_relative].reshape(2 * g - 1, 2 * g - 1, -1),
                             (2 * gh - 1, 2 * gw - 1, self.num_heads), "bicubic")
      num_relative = (2 * gh - 1) * (2 * gw - 1)
      table = jnp.concatenate([rel.reshape(num_relative, -1), table[-3:]], axis=0)
    if patch_ids is None:  # the whole grid in raster order: one bias for the batch
      ids = jnp.arange(gh * gw)[None]
    else:
      ids = patch_ids
    idx = relative_position_index(ids // gw, ids % gw, gw, num_relative, with_cls)
    return jnp.moveaxis(table[idx], -1, -3)  # (B or 1, H, [1+]L, [1+]L)


def rescale_by_depth(encoder_params: dict) -> dict:
  """BEiT's `fix_init_weight`: block l's attn.proj and mlp.fc2 kernels divided by √(2·(l+1)), so
  the residual stream does not grow with depth at init (data2vec's encoder)."""
  out = dict(encoder_params)
  for name, block in encoder_params.items():
    if name == "blocks":  # scan_layers: stacked along a leading depth axis
      depth = jax.tree.leaves(block)[0].shape[0]
      scale = 1.0 / jnp.sqrt(2.0 * jnp.arange(1, depth + 1))
      inner = block["block"]
      fix = lambda k: k * scale.reshape((-1,) + (1,) * (k.ndim - 1))
    elif re.fullmatch(r"blocks_\d+", name):
      inner, fix = block, (lambda k, s=1.0 / (2.0 * (int(name[7:]) + 1)) ** 0.5: k * s)
    else:
      continue
    new = jax.tree.map(lambda x: x, inner)
    new["attn"] = dict(new["attn"], proj=dict(new["attn"]["proj"], kernel=fix(new["attn"]["proj"]["kernel"])))
    new["mlp"] = dict(new["mlp"], fc2=dict(new["mlp"]["fc2"], kernel=fix(new["mlp"]["fc2"]["kernel"])))
    out[name] = {"block": new} if name == "blocks" else new
  return out


def reduce_tokens(x, ids, keep: int, keys=None):
  """Progressive token reduction (PCAE, docs/methods.md §3.3): keep the `keep` patch tokens least
  similar to the mean token (cosine), or a random `keep` when per-example `keys` (B,) are given
  ("RD" ablation).

  x (B, n, D) patch tokens, ids (B, n) their patch ids -> (B, keep, D), (B, keep). The ranking is
  a non-differentiable choice; the kept tokens carry gradients as usual.
  """
  xn = jax.lax.stop_gradient(x)
  xn = xn / jnp.maximum(jnp.linalg.norm(xn, axis=-1, keepdims=True), 1e-12)
  if keys is None:
    score = -jnp.einsum("bnd,bd->bn", xn, xn.mean(axis=1))      # higher = more distinctive
  else:
    score = jax.vmap(lambda k: jax.random.uniform(k, ids.shape[1:]))(keys)
  _, order = jax.lax.top_k(score, keep)
  return jnp.take_along_axis(x, order[..., None], axis=1), jnp.take_along_axis(ids, order, axis=1)


class _ScanStep(nn.Module):
  """One encoder block as a scan body: (x, (drop-path rate, per-example keys of this layer)) -> (x, x)."""
  block: Any
  block_kwargs: Any
  deterministic: bool

  @nn.compact
  def __call__(self, x, per_layer, key_mask, attn_bias):
    rate, keys = per_layer
    x = self.block(**dict(self.block_kwargs), name="block")(x, key_mask, self.deterministic, rate, keys, attn_bias)
    return x, x


class Encoder(nn.Module):
  """Pre-LN ViT + final LN + projector, on a subset of patches given by their grid ids.

  Options used by the other methods (defaults give Latent MIM's encoder):
    use_cls          False for I-JEPA (no CLS token anywhere)
    use_mask_token   a learned token that replaces the patches flagged in `token_mask` (data2vec)
    __call__ flags   add_positions=False (CMAE's position-prediction pass), key_mask (padding),
                     reduce=((block, keep), ...) progressive token reduction after those blocks
                     (PCAE; per-example `reduce_key` (B,) keys for random drop)
  """
  width: int
  depth: int
  num_heads: int
  grid_size: int
  mlp_ratio: float = 4.0
  projector_dim: int = 4096
  projector_depth: int = 3
  freeze_pe: bool = True
  posemb: str = "lmim"      # 'lmim' (official Latent MIM coordinates) or 'mae'
  use_cls: bool = True
  use_mask_token: bool = False
  drop_path: float = 0.0    # stochastic depth, linearly increasing from 0 to this rate over the blocks
  attn_drop: float = 0.0    # dropout on attention weights
  proj_drop: float = 0.0    # dropout after attn.proj and in the MLP (timm's drop_rate)
  layer_scale: float | None = None  # γ init of per-channel layer scale (BEiT/data2vec 1e-4); None = off
  qkv_bias: str = "qkv"     # 'qkv' or 'qv' (BEiT: q and v biases, no k bias)
  rel_pos_bias: bool = False  # one BEiT relative position bias shared by all blocks (data2vec)
  abs_pos: bool = True      # add the absolute sin-cos (or learned) position table
  init_style: str = "xavier"  # kernel initialiser, lmim.models.layers.KERNEL_INITS
  remat: Any = "none"      # lmim.models.layers.remat_policy
  scan_layers: bool = False  # blocks as one lax.scan over stacked weights ('blocks/...' [depth, ...])
  dtype: Any = jnp.float32
  barriers: bool = False    # cotangent barriers between sub-layers (lmim.models.layers.cotangent_barrier)
  attention: str = "plain"  # lmim.models.layers.ATTENTION_IMPLS

  @property
  def has_dropout(self) -> bool:
    """Whether training draws anything random inside the network (else `deterministic` is free)."""
    return bool(self.drop_path or self.attn_drop or self.proj_drop)

  @nn.compact
  def __call__(self, patches, patch_ids, *, token_mask=None, key_mask=None, add_positions=True,
               reduce=(), reduce_key=None, grid=None, positions="extrapolate", deterministic=True,
               dropout_keys=None):
    """patches (B, L, p·p·C), patch_ids (B, L) int (None: the whole grid in raster order) -> dict of
    representations:
    pre_norm / encoded / projected (B, P+L', D) with P = 1 if CLS; patches (B, L', D) = encoded
    patch tokens; cls (B, D) if CLS; blocks = every block's output; ids (B, L') the patch ids of
    the tokens that survive `reduce` (L' = L without reduction). `grid` = (gh, gw) when the
    patches come from another grid than the training one (patch ids are then row·gw + col);
    `positions` says how its position table is made (position_embeddings).
    `deterministic=False` turns on drop path and dropout, drawn from `dropout_keys` (B,): one key
    per example (lmim.models.layers: the same draws on any device count)."""
    if not deterministic and self.has_dropout and dropout_keys is None:
      raise ValueError("deterministic=False with dropout or drop path needs dropout_keys (one key per example)")
    full_grid = patch_ids is None or (grid is not None and patches.shape[1] == grid[0] * grid[1])
    if patch_ids is None:  # every patch of the grid, in raster order
      patch_ids = jnp.broadcast_to(jnp.arange(patches.shape[1], dtype=jnp.int32), patches.shape[:2])
    chex.assert_rank([patches, patch_ids], [3, 2])
    chex.assert_equal_shape_prefix([patches, patch_ids], 2)  # one id per patch token
    x = PatchEmbed(self.width, self.dtype, self.init_style, name="embed")(patches).astype(jnp.float32)
    b = x.shape[0]
    token_init = layers.TOKEN_INITS[self.init_style]
    if self.use_mask_token:
      mask_token = self.param("mask_token", token_init, (1, 1, self.width))
      if token_mask is not None:  # BEiT-style: masked patches become the mask token, PE added after
        x = jnp.where(token_mask[..., None], mask_token.astype(x.dtype), x)
    if add_positions and self.abs_pos:
      table = position_embeddings(self, self.width, self.grid_size, self.freeze_pe, self.posemb, grid, positions)
      x = x + gather_positions(table, patch_ids, with_cls=False)
    attn_bias = None
    if self.rel_pos_bias:  # the whole grid: one (1, H, ., .) bias, not one per example
      attn_bias = RelativePositionBias(self.grid_size, self.num_heads, name="rel_pos_bias")(
          None if full_grid else patch_ids, self.use_cls, grid)
    prefix = 0
    if self.use_cls:
      cls = self.param("cls_token", token_init, (1, 1, self.width), jnp.float32)
      # CLS gets position row 0, which is zero in every table (docs/latent_mim.md §6.1): nothing to add.
      x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)), x], axis=1)
      prefix = 1
      if key_mask is not None:
        key_mask = jnp.pad(key_mask, ((0, 0), (1, 0)), constant_values=True)

    if reduce and (key_mask is not None or attn_bias is not None):
      raise ValueError("token reduction with padded (key-masked) tokens or a relative position bias is not supported")
    ids, schedule = patch_ids, dict(reduce)
    block = layers.remat(layers.Block, self.remat, static_argnums=(3,))
    block_kwargs = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dtype=self.dtype,
                        attn_drop=self.attn_drop, proj_drop=self.proj_drop, layer_scale=self.layer_scale,
                        qkv_bias=self.qkv_bias, init_style=self.init_style, barriers=self.barriers,
                        attention=self.attention)
    if deterministic or not self.has_dropout:
      deterministic, layer_keys = True, [None] * self.depth
    else:  # block i draws from the example keys folded with i
      layer_keys = [layers.fold_keys(dropout_keys, i) for i in range(self.depth)]
    blocks = []
    if self.scan_layers and self.depth:
      if reduce:
        raise ValueError("scan_layers cannot reduce tokens between blocks (PCAE): set model.scan_layers=False")
      # One block traced once and scanned `depth` times over stacked weights: the compiled
      # program (and compile time) no longer grows with depth. Same numerics as the loop.
      scanned = nn.scan(_ScanStep, variable_axes={"params": 0}, split_rngs={"params": True},
                        in_axes=(0, nn.broadcast, nn.broadcast), length=self.depth)
      rates = self.drop_path * jnp.arange(self.depth, dtype=jnp.float32) / max(self.depth - 1, 1)
      keys = None if deterministic else jnp.stack(layer_keys)
      x, stacked = scanned(block, tuple(block_kwargs.items()), deterministic,
                           name="blocks")(x, (rates, keys), key_mask, attn_bias)
      blocks = [stacked[i] for i in range(self.depth)]
    for i in range(0 if self.scan_layers else self.depth):
      rate = self.drop_path * i / max(self.depth - 1, 1)
      x = block(drop_path=rate, **block_kwargs, name=f"blocks_{i}")(x, key_mask, deterministic, None,
                                                                    layer_keys[i], attn_bias)
      if i in schedule:
        rk = None if reduce_key is None else jax.vmap(jax.random.fold_in, (0, None))(reduce_key, i)
        kept, ids = reduce_tokens(x[:, prefix:], ids, schedule[i], rk)
        x = jnp.concatenate([x[:, :prefix], kept], axis=1)
      blocks.append(x)
    out = {"pre_norm": x, "blocks": blocks, "ids": ids}
    x = layers.layer_norm("norm")(x)
    out["encoded"] = x
    out["patches"] = x[:, prefix:]
    if self.use_cls:
      out["cls"] = x[:, 0]
    if self.projector_depth > 0:
      x = Projector(self.projector_dim, self.projector_depth, self.dtype, name="head")(x)
    out["projected"] = x.astype(jnp.float32)
    return out


def stack_layers(encoder_params: dict) -> dict:
  """Encoder weights in the loop layout (blocks_0 ... blocks_{n-1}) -> the scan_layers layout
  (blocks/block/... stacked along a leading depth axis). Other leaves are shared, not copied."""
  names = sorted((k for k in encoder_params if re.fullmatch(r"blocks_\d+", k)), key=lambda k: int(k[7:]))
  out = {k: v for k, v in encoder_params.items() if k not in names}
  if names:
    out["blocks"] = {"block": jax.tree.map(lambda *xs: jnp.stack(xs), *[encoder_params[k] for k in names])}
  return out


def unstack_layers(encoder_params: dict) -> dict:
  """Inverse of `stack_layers`: the scan_layers layout -> blocks_0 ... blocks_{n-1}."""
  if "blocks" not in encoder_params:
    return dict(encoder_params)
  out = {k: v for k, v in encoder_params.items() if k != "blocks"}
  stacked = encoder_params["blocks"]["block"]
  depth = jax.tree.leaves(stacked)[0].shape[0]
  for i in range(depth):
    out[f"blocks_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
  return out
