"""Networks: the ViT encoder (+ projector), the decoders, position embeddings; builders from config."""
import jax
import jax.numpy as jnp

from lmim.errors import ConfigError
from lmim.models.decoder import CrossDecoder, SelfAttentionDecoder
from lmim.models.layers import ATTENTION_IMPLS, KERNEL_INITS
from lmim.models.posemb import STYLES
from lmim.models.vit import VARIANTS, Encoder, parse_variant

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DECODER_TYPES = ("cross", "self")


def encoder_dims(model_cfg) -> dict:
  """width/depth/num_heads/patch_size from `variant` ('B/16'), each overridable by its own field."""
  try:
    width, depth, heads, patch = parse_variant(model_cfg.variant)
  except ValueError:
    raise ConfigError("model.variant", model_cfg.variant,
                      f"one of {'/'.join(VARIANTS)}, optionally with a patch size, e.g. 'B/16'") from None
  return dict(width=model_cfg.get("width") or width, depth=model_cfg.get("depth") or depth,
              num_heads=model_cfg.get("num_heads") or heads,
              patch_size=model_cfg.get("patch_size") or patch or (14 if model_cfg.variant.startswith("H") else 16))


def compute_dtype(model_cfg):
  name = model_cfg.get("dtype", "float32")
  if name not in DTYPES:
    raise ConfigError("model.dtype", name, f"one of {sorted(DTYPES)}")
  return DTYPES[name]


BARRIER_MODES = ("auto", "on", "off")


def cotangent_barriers(model_cfg) -> bool:
  """model.cotangent_barriers: 'on', 'off', or 'auto' = on where the step runs on XLA:CPU (whose
  fusion recomputes residual-stream cotangents per consumer; TPU/GPU fusion does not need it)."""
  mode = model_cfg.get("cotangent_barriers", "auto")
  if mode not in BARRIER_MODES:
    raise ConfigError("model.cotangent_barriers", mode, f"one of {list(BARRIER_MODES)}")
  return mode == "on" or (mode == "auto" and jax.default_backend() == "cpu")


def _check_width(field: str, width: int, heads: int, heads_field: str, what: str):
  if heads < 1 or width % heads:
    raise ConfigError(heads_field, heads, f"must divide the {what} width {width}")
  if width % 4:
    raise ConfigError(field, width, "must be divisible by 4 (2-D sin-cos position embeddings)")


def validate_model(model_cfg, *, decoder: bool = True, projector: bool = True) -> None:
  """Checks shared by every method: sizes that cannot build, unknown names."""
  d = encoder_dims(model_cfg)
  compute_dtype(model_cfg)
  cotangent_barriers(model_cfg)
  impl = model_cfg.get("attention", "plain")
  if impl not in ATTENTION_IMPLS:
    raise ConfigError("model.attention", impl, f"one of {list(ATTENTION_IMPLS)}")
  if impl != "plain" and model_cfg.get("attn_drop", 0.0):
    raise ConfigError("model.attention", impl, f"'plain' with model.attn_drop={model_cfg.attn_drop} (the fused "
                      "attention has no dropout on the attention weights)")
  _check_width("model.width", d["width"], d["num_heads"], "model.num_heads", "encoder")
  if d["depth"] < 1:
    raise ConfigError("model.depth", d["depth"], "must be >= 1")
  if model_cfg.grid_size < 2:
    raise ConfigError("model.grid_size", model_cfg.grid_size, "must be >= 2")
  if model_cfg.get("posemb", "lmim") not in STYLES:
    raise ConfigError("model.posemb", model_cfg.posemb, f"one of {list(STYLES)}")
  if projector and not 0 <= model_cfg.projector.depth <= 8:
    raise ConfigError("model.projector.depth", model_cfg.projector.depth, "0 (no projector) to 8")
  for field in ("drop_path", "attn_drop", "proj_drop"):
    if not 0.0 <= model_cfg.get(field, 0.0) < 1.0:
      raise ConfigError(f"model.{field}", model_cfg[field], "a rate in [0, 1)")
  if model_cfg.get("qkv_bias", "qkv") not in ("qkv", "qv"):
    raise ConfigError("model.qkv_bias", model_cfg.qkv_bias, "'qkv' or 'qv' (q and v biases only, as BEiT)")
  if model_cfg.get("init", "xavier") not in KERNEL_INITS:
    raise ConfigError("model.init", model_cfg.init, f"one of {list(KERNEL_INITS)}")
  scale = model_cfg.get("layer_scale")
  if scale is not None and not scale > 0:
    raise ConfigError("model.layer_scale", scale, "None (no layer scale) or an initial value > 0, e.g. 1e-4")
  if decoder:
    dec = model_cfg.decoder
    if not 0.0 <= dec.get("drop_path", 0.0) < 1.0:
      raise ConfigError("model.decoder.drop_path", dec.drop_path, "a rate in [0, 1)")
    if dec.get("drop_path", 0.0) and dec.get("type", "cross") == "cross":
      raise ConfigError("model.decoder.drop_path", dec.drop_path, "0 for the cross decoder (drop path is "
                        "implemented for the self-attention decoder, as PCAE uses it)")
    if dec.get("type", "cross") not in DECODER_TYPES:
      raise ConfigError("model.decoder.type", dec.type, f"one of {list(DECODER_TYPES)}")
    _check_width("model.decoder.width", dec.width, dec.num_heads, "model.decoder.num_heads", "decoder")
    if dec.depth < 1:
      raise ConfigError("model.decoder.depth", dec.depth, "must be >= 1")


def build_encoder(model_cfg, projector: bool = True, **overrides) -> Encoder:
  d = encoder_dims(model_cfg)
  kw = dict(width=d["width"], depth=d["depth"], num_heads=d["num_heads"],
            grid_size=model_cfg.grid_size, mlp_ratio=model_cfg.mlp_ratio,
            projector_dim=model_cfg.projector.dim,
            projector_depth=model_cfg.projector.depth if projector else 0,
            freeze_pe=model_cfg.freeze_pe, posemb=model_cfg.get("posemb", "lmim"),
            remat=model_cfg.remat, scan_layers=model_cfg.get("scan_layers", False),
            drop_path=model_cfg.get("drop_path", 0.0), attn_drop=model_cfg.get("attn_drop", 0.0),
            proj_drop=model_cfg.get("proj_drop", 0.0), layer_scale=model_cfg.get("layer_scale"),
            qkv_bias=model_cfg.get("qkv_bias", "qkv"), rel_pos_bias=model_cfg.get("rel_pos_bias", False),
            abs_pos=model_cfg.get("abs_pos", True), init_style=model_cfg.get("init", "xavier"),
            dtype=compute_dtype(model_cfg), barriers=cotangent_barriers(model_cfg),
            attention=model_cfg.get("attention", "plain"))
  kw.update(overrides)
  return Encoder(**kw)


def build_decoder(model_cfg, out_dim: int | None = None, kind: str | None = None, **overrides):
  """The configured decoder type (`kind` = 'self' or 'cross' overrides it, for methods whose
  decoder is fixed); `out_dim` defaults to the encoder width (latent prediction)."""
  d, dec = encoder_dims(model_cfg), model_cfg.decoder
  kw = dict(width=dec.width, depth=dec.depth, num_heads=dec.num_heads, out_dim=out_dim or d["width"],
            grid_size=model_cfg.grid_size, mlp_ratio=model_cfg.mlp_ratio, freeze_pe=model_cfg.freeze_pe,
            posemb=model_cfg.get("posemb", "lmim"), remat=model_cfg.remat, dtype=compute_dtype(model_cfg),
            drop_path=dec.get("drop_path", 0.0), init_style=model_cfg.get("init", "xavier"),
            barriers=cotangent_barriers(model_cfg), attention=model_cfg.get("attention", "plain"))
  kw.update(overrides)
  if (kind or dec.get("type", "cross")) == "self":
    return SelfAttentionDecoder(**kw)
  return CrossDecoder(visual_cues=dec.visual_cues, **kw)
