"""Networks: the ViT encoder (+ projector), the cross-attention decoder, position embeddings."""
import jax.numpy as jnp

from lmim.errors import ConfigError
from lmim.models.decoder import CrossDecoder
from lmim.models.vit import VARIANTS, Encoder, parse_variant

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def encoder_dims(model_cfg) -> dict:
  """width/depth/num_heads/patch_size from `variant` ('B/16'), each overridable by its own field."""
  try:
    width, depth, heads, patch = parse_variant(model_cfg.variant)
  except ValueError:
    raise ConfigError("model.variant", model_cfg.variant,
                      f"one of {'/'.join(VARIANTS)}, optionally with a patch size, e.g. 'B/16'") from None
  dims = dict(width=model_cfg.get("width") or width, depth=model_cfg.get("depth") or depth,
              num_heads=model_cfg.get("num_heads") or heads,
              patch_size=model_cfg.get("patch_size") or patch or (14 if model_cfg.variant.startswith("H") else 16))
  return dims


def compute_dtype(model_cfg):
  name = model_cfg.get("dtype", "float32")
  if name not in DTYPES:
    raise ConfigError("model.dtype", name, f"one of {sorted(DTYPES)}")
  return DTYPES[name]


def build_encoder(model_cfg, projector: bool = True) -> Encoder:
  d = encoder_dims(model_cfg)
  return Encoder(width=d["width"], depth=d["depth"], num_heads=d["num_heads"],
                 grid_size=model_cfg.grid_size, mlp_ratio=model_cfg.mlp_ratio,
                 projector_dim=model_cfg.projector.dim,
                 projector_depth=model_cfg.projector.depth if projector else 0,
                 freeze_pe=model_cfg.freeze_pe, remat=model_cfg.remat, dtype=compute_dtype(model_cfg))


def build_decoder(model_cfg) -> CrossDecoder:
  d, dec = encoder_dims(model_cfg), model_cfg.decoder
  return CrossDecoder(width=dec.width, depth=dec.depth, num_heads=dec.num_heads, out_dim=d["width"],
                      grid_size=model_cfg.grid_size, mlp_ratio=model_cfg.mlp_ratio,
                      visual_cues=dec.visual_cues, freeze_pe=model_cfg.freeze_pe,
                      remat=model_cfg.remat, dtype=compute_dtype(model_cfg))
