"""Transformer building blocks shared by the encoder and the decoders.

Module and parameter names follow the official PyTorch code (`qkv`, `proj`, `fc1`, `norm1`, ...)
so the converter is a mechanical rename and the weight-decay rule (which matches on names
containing "norm", "embed" or "bias") means the same thing in both codebases.

Numerics (docs/latent_mim.md §6.1, §14): LayerNorm with the two-pass (torch) variance, exact erf GELU,
softmax in float32 even when the matmuls run in bfloat16, xavier-uniform init on the *full*
fused weight (so the fused qkv has bound sqrt(6/(D+3D)) as in the official init).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lmim import config_lib

Dtype = Any

xavier = nn.initializers.xavier_uniform()


# model.remat -> what a rematerialised block keeps for the backward pass (None: nothing but its
# inputs). Names match lmim.config_lib.REMAT_POLICIES.
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat(cls, policy, static_argnums=()):
  """`cls` rematerialised under a named policy; 'none' (or False) returns it unchanged."""
  policy = config_lib.remat_policy(policy)
  if policy == "none":
    return cls
  return nn.remat(cls, static_argnums=static_argnums, policy=REMAT_POLICIES[policy])


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True) -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=xavier, bias_init=nn.initializers.zeros, name=name)


def layer_norm(name: str, eps: float = 1e-6) -> nn.LayerNorm:
  # float32 statistics whatever the compute dtype; use_fast_variance=False is torch's formula.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


def gelu(x):
  return jax.nn.gelu(x, approximate=False)


def attention(q, k, v, key_mask=None):
  """softmax(q·kᵀ/√hd)·v for (B, Lq, H, hd) x (B, Lk, H, hd); logits and softmax in float32.

  key_mask (B, Lk) bool, optional: False keys are ignored (padding with static shapes).
  """
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (rows q | k | v, heads contiguous)."""
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, key_mask=None):
    b, n, c = x.shape
    qkv = dense(3 * c, "qkv", self.dtype)(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
    out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask).reshape(b, n, c)
    return dense(c, "proj", self.dtype)(out)


class CrossAttention(nn.Module):
  """Queries attend to a memory; k and v share one fused projection (rows k | v)."""
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q, kv):
    (b, lq, c), lk = q.shape, kv.shape[1]
    hd = c // self.num_heads
    q = dense(c, "q_proj", self.dtype)(q).reshape(b, lq, self.num_heads, hd)
    kv = dense(2 * c, "kv_proj", self.dtype)(kv).reshape(b, lk, 2, self.num_heads, hd)
    out = attention(q, kv[:, :, 0], kv[:, :, 1]).reshape(b, lq, c)
    return dense(c, "proj", self.dtype)(out)


class Mlp(nn.Module):
  """timm's Mlp: fc1 -> exact GELU -> fc2."""
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    out = x.shape[-1]
    return dense(out, "fc2", self.dtype)(gelu(dense(self.hidden, "fc1", self.dtype)(x)))


class Block(nn.Module):
  """Pre-LN ViT block: x + Attn(LN(x)), then x + MLP(LN(x)); optional stochastic depth."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  drop_path: float = 0.0

  def _drop(self, y, deterministic: bool, rate=None):
    """timm's DropPath: drop the whole residual branch per example, rescale the survivors.
    `rate` (a traced scalar) replaces the `drop_path` attribute inside a scan over layers."""
    if deterministic or (rate is None and self.drop_path == 0.0):
      return y
    keep = 1.0 - (self.drop_path if rate is None else rate)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (y.shape[0],) + (1,) * (y.ndim - 1))
    return y * mask.astype(y.dtype) / keep

  @nn.compact
  def __call__(self, x, key_mask=None, deterministic: bool = True, rate=None):
    x = x + self._drop(SelfAttention(self.num_heads, self.dtype, name="attn")(layer_norm("norm1")(x), key_mask),
                       deterministic, rate)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    return x + self._drop(Mlp(hidden, self.dtype, name="mlp")(layer_norm("norm2")(x)), deterministic, rate)


class CrossBlock(nn.Module):
  """Decoder block (docs/latent_mim.md §8): self-attention among queries, cross-attention to a
  fixed memory, MLP."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, q, memory):
    q = q + SelfAttention(self.num_heads, self.dtype, name="self_attn")(layer_norm("norm1")(q))
    q = q + CrossAttention(self.num_heads, self.dtype, name="cross_attn")(
        layer_norm("norm2q")(q), layer_norm("norm2kv")(memory))
    hidden = int(q.shape[-1] * self.mlp_ratio)
    return q + Mlp(hidden, self.dtype, name="mlp")(layer_norm("norm3")(q))
