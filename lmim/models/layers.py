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

from lmim.errors import ConfigError

Dtype = Any

xavier = nn.initializers.xavier_uniform()


def _trunc_normal_1sigma(key, shape, dtype=jnp.float32):
  """N(0, 0.02²) truncated at ±0.02 (BEiT/data2vec's `trunc_normal_(std=.02, a=-std, b=std)`,
  effective std ≈ 0.0108)."""
  return (0.02 * jax.random.truncated_normal(key, -1.0, 1.0, shape, jnp.float32)).astype(dtype)


# model.init -> the initialiser of every Linear kernel (and of the patch embedding):
#   xavier        xavier-uniform on the full weight (Latent MIM, MAE, PCAE, CMAE)
#   trunc_normal  N(0, 0.02²) with bounds ±2 (absolute), i.e. untruncated (I-JEPA's `_init_weights`)
#   beit          N(0, 0.02²) truncated at ±1σ (BEiT / data2vec); the 1/√(2·layer) rescale of
#                 attn.proj and mlp.fc2 is applied after init (lmim.models.vit.rescale_by_depth)
KERNEL_INITS = {"xavier": xavier, "trunc_normal": nn.initializers.normal(0.02), "beit": _trunc_normal_1sigma}
TOKEN_INITS = {"xavier": nn.initializers.normal(0.02), "trunc_normal": nn.initializers.normal(0.02),
               "beit": _trunc_normal_1sigma}


# model.remat -> what a rematerialised block keeps for the backward pass (None: nothing but its
# inputs); 'none' runs the block as it is.
REMAT_POLICIES = {
    "full": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def remat_policy(value) -> str:
  """model.remat -> 'none' or a key of REMAT_POLICIES (True/False are accepted as 'full'/'none')."""
  if value is True:
    return "full"
  if value is False or value is None:
    return "none"
  if value != "none" and value not in REMAT_POLICIES:
    raise ConfigError("model.remat", value, f"one of {['none', *REMAT_POLICIES]} (or True/False)")
  return value


def remat(cls, policy, static_argnums=()):
  """`cls` rematerialised under a named policy; 'none' (or False) returns it unchanged."""
  policy = remat_policy(policy)
  if policy == "none":
    return cls
  return nn.remat(cls, static_argnums=static_argnums, policy=REMAT_POLICIES[policy])


def dense(features: int, name: str, dtype: Dtype, use_bias: bool = True, init: str = "xavier") -> nn.Dense:
  return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=KERNEL_INITS[init], bias_init=nn.initializers.zeros, name=name)


def layer_norm(name: str, eps: float = 1e-6) -> nn.LayerNorm:
  # float32 statistics whatever the compute dtype; use_fast_variance=False is torch's formula.
  return nn.LayerNorm(epsilon=eps, use_fast_variance=False, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


def gelu(x):
  """Exact GELU in torch's formula, x·½·(1 + erf(x/√2)) (nn.GELU, what the official code runs).
  jax.nn.gelu(approximate=False) writes it with erfc, whose XLA expansion is two branches with an
  exp; erf is one rational polynomial: same values to float32 round-off (and equal to torch's
  more often), and fewer operations in every MLP."""
  return x * 0.5 * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


###################################################################################################
# Per-example randomness for dropout and stochastic depth.
#
# Every random draw of a block comes from the example's own key (lmim.views.example_keys: the
# step key folded with the example's row in the global batch), folded with the layer and a
# branch number. An example is dropped the same way whatever the device count, the mesh or the
# gradient-accumulation split, so sharded and accumulated steps equal the one-device step.
###################################################################################################

# Branch numbers folded into a layer's keys (each random choice of a block has its own stream).
DROP_PATH_ATTN, DROP_PATH_MLP, ATTN_DROP, PROJ_DROP, MLP_DROP_HIDDEN, MLP_DROP_OUT = range(6)


def fold_keys(keys, data):
  """(B,) keys folded with `data` (an int, or a traced int such as the layer of a scan)."""
  return jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, data)


def keep_mask(keys, branch: int, keep, shape=()):
  """(B, *shape) bool: Bernoulli(keep) drawn from each example's own key."""
  return jax.vmap(lambda k: jax.random.bernoulli(jax.random.fold_in(k, branch), keep, shape))(keys)


def dropout(x, rate, keys, branch: int, deterministic: bool):
  """Inverted dropout of x (B, ...) with per-example masks; a no-op at rate 0 or when deterministic."""
  if deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
    return x
  keep = 1.0 - rate
  return x * keep_mask(keys, branch, keep, x.shape[1:]).astype(x.dtype) / keep


def drop_path(x, rate, keys, branch: int, deterministic: bool):
  """timm's DropPath: the whole residual branch of an example is dropped, survivors rescaled."""
  if deterministic or (isinstance(rate, (int, float)) and rate == 0.0):
    return x
  keep = 1.0 - rate
  mask = keep_mask(keys, branch, keep).reshape((-1,) + (1,) * (x.ndim - 1))
  return x * mask.astype(x.dtype) / keep


###################################################################################################
# Attention, MLP and the pre-LN block.
###################################################################################################


# model.attention: 'plain' is the reference (einsums, float32 logits and softmax); 'xla' and 'cudnn'
# are jax.nn.dot_product_attention's fused implementations (XLA on CPU/TPU, cuDNN flash attention
# on GPU), equal to the reference to float32 round-off (tests/test_fast_paths.py). The fused path
# has no dropout on the attention weights.
ATTENTION_IMPLS = ("plain", "xla", "cudnn")


def attention(q, k, v, key_mask=None, bias=None, drop: float = 0.0, keys=None, deterministic: bool = True,
              impl: str = "plain"):
  """softmax(q·kᵀ/√hd + bias)·v for (B, Lq, H, hd) x (B, Lk, H, hd); logits and softmax in float32.

  key_mask (B, Lk) bool, optional: False keys are ignored (padding with static shapes).
  bias (B or 1, H, Lq, Lk), optional: added to the logits (relative position bias).
  drop: dropout on the attention weights (per example, see `dropout`).
  impl: 'plain' (this function's einsums) or a jax.nn.dot_product_attention implementation.
  """
  if impl != "plain":
    if drop and not deterministic:
      raise ValueError(f"attention impl {impl!r} has no dropout on the attention weights: use 'plain'")
    mask = None if key_mask is None else key_mask[:, None, None, :]
    bias = None if bias is None else bias.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask, implementation=impl)
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * scale
  if bias is not None:
    logits = logits + bias.astype(jnp.float32)
  if key_mask is not None:
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  weights = dropout(weights, drop, keys, ATTN_DROP, deterministic).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class SelfAttention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (rows q | k | v, heads contiguous).

  qkv_bias: 'qkv' (one bias on the fused projection) or 'qv' (BEiT/data2vec: learned q and v
  biases, none on k — a k bias only shifts every logit of a query by the same amount)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  qkv_bias: str = "qkv"
  attn_drop: float = 0.0
  proj_drop: float = 0.0
  init_style: str = "xavier"
  impl: str = "plain"       # ATTENTION_IMPLS

  @nn.compact
  def __call__(self, x, key_mask=None, bias=None, keys=None, deterministic: bool = True):
    b, n, c = x.shape
    qkv = dense(3 * c, "qkv", self.dtype, use_bias=self.qkv_bias == "qkv", init=self.init_style)(x)
    if self.qkv_bias == "qv":
      q_bias = self.param("q_bias", nn.initializers.zeros, (c,))
      v_bias = self.param("v_bias", nn.initializers.zeros, (c,))
      qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(qkv.dtype)
    qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads)
    out = attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], key_mask, bias, self.attn_drop, keys,
                    deterministic, self.impl).reshape(b, n, c)
    out = dense(c, "proj", self.dtype, init=self.init_style)(out)
    return dropout(out, self.proj_drop, keys, PROJ_DROP, deterministic)


class CrossAttention(nn.Module):
  """Queries attend to a memory; k and v share one fused projection (rows k | v)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  impl: str = "plain"       # ATTENTION_IMPLS

  @nn.compact
  def __call__(self, q, kv):
    (b, lq, c), lk = q.shape, kv.shape[1]
    hd = c // self.num_heads
    q = dense(c, "q_proj", self.dtype)(q).reshape(b, lq, self.num_heads, hd)
    kv = dense(2 * c, "kv_proj", self.dtype)(kv).reshape(b, lk, 2, self.num_heads, hd)
    out = attention(q, kv[:, :, 0], kv[:, :, 1], impl=self.impl).reshape(b, lq, c)
    return dense(c, "proj", self.dtype)(out)


class Mlp(nn.Module):
  """timm's Mlp: fc1 -> exact GELU -> dropout -> fc2 -> dropout."""
  hidden: int
  dtype: Dtype = jnp.float32
  drop: float = 0.0
  init_style: str = "xavier"

  @nn.compact
  def __call__(self, x, keys=None, deterministic: bool = True):
    out = x.shape[-1]
    h = dropout(gelu(dense(self.hidden, "fc1", self.dtype, init=self.init_style)(x)), self.drop, keys,
                MLP_DROP_HIDDEN, deterministic)
    return dropout(dense(out, "fc2", self.dtype, init=self.init_style)(h), self.drop, keys, MLP_DROP_OUT, deterministic)


class Block(nn.Module):
  """Pre-LN ViT block: x + DropPath(γ₁·Attn(LN(x))), then x + DropPath(γ₂·MLP(LN(x))).

  drop_path     stochastic depth of this block (`rate`, traced, replaces it inside a scan)
  attn_drop     dropout on the attention weights; proj_drop: after attn.proj and in the MLP
  layer_scale   γ's initial value (CaiT/BEiT layer scale, learned per channel); None = no γ
  qkv_bias      'qkv' or 'qv' (see SelfAttention); init_style: see KERNEL_INITS
  Random draws come from `keys` (B,), this layer's per-example keys (see `fold_keys`).
  """
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  drop_path: float = 0.0
  attn_drop: float = 0.0
  proj_drop: float = 0.0
  layer_scale: float | None = None
  qkv_bias: str = "qkv"
  init_style: str = "xavier"
  barriers: bool = False    # cotangent barriers on the residual stream (see cotangent_barrier)
  attention: str = "plain"  # ATTENTION_IMPLS

  def _scale(self, name, y):
    if self.layer_scale is None:
      return y
    gamma = self.param(name, nn.initializers.constant(self.layer_scale), (y.shape[-1],))
    return y * gamma.astype(y.dtype)

  @nn.compact
  def __call__(self, x, key_mask=None, deterministic: bool = True, rate=None, keys=None, attn_bias=None):
    rate = self.drop_path if rate is None else rate
    attn = SelfAttention(self.num_heads, self.dtype, self.qkv_bias, self.attn_drop, self.proj_drop,
                         self.init_style, self.attention, name="attn")
    x = residual_input(x, self.barriers)
    y = self._scale("gamma_1", attn(layer_norm("norm1")(x), key_mask, attn_bias, keys, deterministic))
    x = residual_input(x + drop_path(y, rate, keys, DROP_PATH_ATTN, deterministic), self.barriers)
    hidden = int(x.shape[-1] * self.mlp_ratio)
    y = self._scale("gamma_2", Mlp(hidden, self.dtype, self.proj_drop, self.init_style, name="mlp")(
        layer_norm("norm2")(x), keys, deterministic))
    return x + drop_path(y, rate, keys, DROP_PATH_MLP, deterministic)


# XLA:CPU fuses the elementwise backward of a residual stream (LayerNorm backward, residual adds)
# into every consumer of its cotangent — including the transposed copies that feed each
# weight-gradient matmul — so the whole chain through every later block is recomputed once per
# consumer, in transposed order (≈ 12 % of a Ti/16 Latent MIM step). A cotangent barrier is the
# identity forward; backward it passes the cotangent through a conditional, a computation of its
# own that XLA cannot fuse across, so the cotangent is computed once. (jax.lax.optimization_barrier
# does not do this: XLA:CPU expands it away before fusion.) The values are untouched; it is a
# fusion boundary only, on by default where XLA:CPU runs the step (model.cotangent_barriers).
@jax.custom_vjp
def cotangent_barrier(x):
  return x


def _barrier_fwd(x):
  return x, jnp.isfinite(x.reshape(-1)[0])  # a runtime predicate: a constant one is folded away


def _barrier_bwd(pred, g):
  return (jax.lax.cond(pred, lambda t: t, lambda t: t * 1.0, g),)  # branches must differ in form


cotangent_barrier.defvjp(_barrier_fwd, _barrier_bwd)


def residual_input(x, barrier: bool):
  """x as a sub-layer reads it from the residual stream: with a cotangent barrier when `barrier`."""
  return cotangent_barrier(x) if barrier else x


class CrossBlock(nn.Module):
  """Decoder block (docs/latent_mim.md §8): self-attention among queries, cross-attention to a
  fixed memory, MLP."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  barriers: bool = False    # cotangent barriers on the residual stream (see cotangent_barrier)
  attention: str = "plain"  # ATTENTION_IMPLS

  @nn.compact
  def __call__(self, q, memory):
    q = residual_input(q, self.barriers)
    q = q + SelfAttention(self.num_heads, self.dtype, impl=self.attention, name="self_attn")(layer_norm("norm1")(q))
    q = residual_input(q, self.barriers)
    q = q + CrossAttention(self.num_heads, self.dtype, self.attention, name="cross_attn")(
        layer_norm("norm2q")(q), layer_norm("norm2kv")(memory))
    q = residual_input(q, self.barriers)
    hidden = int(q.shape[-1] * self.mlp_ratio)
    return q + Mlp(hidden, self.dtype, name="mlp")(layer_norm("norm3")(q))
