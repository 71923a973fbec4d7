"""Cross-attention decoder with visual cues (docs/latent_mim.md §8).

Queries are a decoder CLS plus one mask token per target position; the memory is the embedded
visible latents, which no block updates (each block reads it through its own `norm2kv`).

Visual cues (`visual_cues=True`, official `avg_vis_mask_token`): each mask token starts as
    m_i = mask_token + Softmax(P_T P_Vᵀ / √d) Z_V
where P_T, P_V are the fixed sin-cos embeddings of the target and visible cells and Z_V are the
decoder-embedded visible latents *before* position embeddings are added. The kernel is
parameter-free and decays with grid distance, so each mask token begins as a smooth
interpolation of its visible neighbours instead of one shared vector.
"""
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from lmim.models import layers
from lmim.models.vit import gather_positions, position_embeddings


class _Decoder(nn.Module):
  """The fields both decoders take (lmim.models.build_decoder fills them from the config)."""
  width: int
  depth: int
  num_heads: int
  out_dim: int
  grid_size: int
  mlp_ratio: float = 4.0
  freeze_pe: bool = True
  posemb: str = "lmim"
  remat: Any = "none"      # lmim.models.layers.remat_policy
  dtype: Any = jnp.float32
  drop_path: float = 0.0   # stochastic depth of every block (constant: PCAE's decoder)
  init_style: str = "xavier"  # kernel initialiser, lmim.models.layers.KERNEL_INITS
  barriers: bool = False   # cotangent barriers between sub-layers (lmim.models.layers.cotangent_barrier)
  attention: str = "plain"  # lmim.models.layers.ATTENTION_IMPLS

  @property
  def has_dropout(self) -> bool:
    return bool(self.drop_path)


class CrossDecoder(_Decoder):
  visual_cues: bool = True

  def queries(self, x, table, cls_token, mask_token, visible_ids, target_ids):
    """Decoder queries before the first block: (B, 1+Lt, Dd) with position embeddings added."""
    b, lt = target_ids.shape
    m = jnp.broadcast_to(mask_token, (b, lt, self.width))
    if self.visual_cues:
      p_t = gather_positions(table, target_ids, with_cls=False)
      p_v = gather_positions(table, visible_ids, with_cls=False)
      logits = jnp.einsum("btd,bvd->btv", p_t, p_v) * self.width ** -0.5
      m = m + jnp.einsum("btv,bvd->btd", jax.nn.softmax(logits, axis=-1), x[:, 1:])
    q = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, self.width)), m], axis=1)
    return q + gather_positions(table, target_ids, with_cls=True)

  @nn.compact
  def __call__(self, latents, visible_ids, target_ids, deterministic=True, dropout_keys=None):
    """latents (B, 1+Lv, D) encoder output (CLS first) -> predictions (B, 1+Lt, D), CLS first.
    (No dropout in this decoder: the last two arguments are accepted for a uniform call.)"""
    del deterministic, dropout_keys
    chex.assert_rank([latents, visible_ids, target_ids], [3, 2, 2])
    chex.assert_equal_shape_prefix([latents, visible_ids, target_ids], 1)
    cls_token = self.param("cls_token", nn.initializers.normal(0.02), (1, 1, self.width))
    mask_token = self.param("mask_token", nn.initializers.zeros, (1, 1, self.width))
    x = layers.dense(self.width, "embed", self.dtype)(latents).astype(jnp.float32)
    table = position_embeddings(self, self.width, self.grid_size, self.freeze_pe, self.posemb)
    q = self.queries(x, table, cls_token, mask_token, visible_ids, target_ids)
    self.sow("intermediates", "queries", q)  # parity checkpoint 5 (docs/latent_mim.md §14)
    memory = x + gather_positions(table, visible_ids, with_cls=True)  # encoder CLS gets PE row 0

    block = layers.remat(layers.CrossBlock, self.remat)
    for i in range(self.depth):
      q = block(self.num_heads, self.mlp_ratio, self.dtype, self.barriers, self.attention, name=f"blocks_{i}")(q, memory)
    q = layers.layer_norm("norm")(q)
    return layers.dense(self.out_dim, "head", self.dtype)(q).astype(jnp.float32)


class SelfAttentionDecoder(_Decoder):
  """MAE-style decoder: self-attention over [(CLS), visible latents, mask tokens at the queries].

  All tokens get the decoder's fixed position embedding of their cell (CLS: row 0), so the order
  of the sequence carries no information; outputs come back as [visible..., queries...] (CLS
  dropped). With `out_dim` = p·p·C this is MAE's pixel decoder, with `out_dim` = D a latent one
  (Latent MIM's "self-attention decoder" ablation, PCAE's decoder).
  """

  @nn.compact
  def __call__(self, latents, visible_ids, query_ids, visible_mask=None, query_mask=None,
               deterministic=True, dropout_keys=None):
    """latents (B, [1+]Lv, D) (CLS first when present), visible_ids (B, Lv), query_ids (B, Lq)
    -> (B, Lv+Lq, out_dim). visible_mask (B, Lv) / query_mask (B, Lq) mark padded tokens, which no
    token attends to. `deterministic=False` turns on drop path, drawn from `dropout_keys` (B,)."""
    chex.assert_rank([latents, visible_ids, query_ids], [3, 2, 2])
    chex.assert_equal_shape_prefix([latents, visible_ids, query_ids], 1)
    b, lq = query_ids.shape
    has_cls = latents.shape[1] == visible_ids.shape[1] + 1
    mask_token = self.param("mask_token", layers.TOKEN_INITS[self.init_style], (1, 1, self.width))
    x = layers.dense(self.width, "embed", self.dtype, init=self.init_style)(latents).astype(jnp.float32)
    table = position_embeddings(self, self.width, self.grid_size, self.freeze_pe, self.posemb)
    x = x + gather_positions(table, visible_ids, with_cls=has_cls)
    m = jnp.broadcast_to(mask_token, (b, lq, self.width)) + gather_positions(table, query_ids, with_cls=False)
    x = jnp.concatenate([x, m], axis=1)
    key_mask = None
    if visible_mask is not None or query_mask is not None:
      ones = lambda n: jnp.ones((b, n), bool)
      key_mask = jnp.concatenate([ones(int(has_cls)),
                                  ones(visible_ids.shape[1]) if visible_mask is None else visible_mask,
                                  ones(lq) if query_mask is None else query_mask], 1)
    deterministic = deterministic or not self.has_dropout
    block = layers.remat(layers.Block, self.remat, static_argnums=(3,))
    for i in range(self.depth):
      keys = None if deterministic else layers.fold_keys(dropout_keys, i)
      x = block(self.num_heads, self.mlp_ratio, self.dtype, drop_path=self.drop_path, init_style=self.init_style,
                barriers=self.barriers, attention=self.attention, name=f"blocks_{i}")(x, key_mask, deterministic,
                                                                                       None, keys)
    x = layers.layer_norm("norm")(x)
    return layers.dense(self.out_dim, "pred", self.dtype, init=self.init_style)(x[:, int(has_cls):]).astype(jnp.float32)
