"""MAE (He et al., CVPR 2022): the pixel baseline of every table in the Latent MIM paper.

Exactly as facebookresearch/mae `models_mae.py` computes it:
    shuffle = argsort(noise), ids_restore = argsort(shuffle); keep the first ⌊L·(1−ratio)⌋
    latent  = Encoder(patches[keep])                  CLS + kept tokens, after the final LayerNorm
    pred    = Decoder([latent, mask tokens], grid order)   8×512 self-attention, MAE's sin-cos table
    loss    = mean over removed patches of MSE(pred, standardised pixels)   (norm_pix_loss)
Weight decay follows MAE (timm's add_weight_decay): every parameter except 1-D ones and biases,
so the CLS and mask tokens and both embeddings decay (unlike Latent MIM's rule).
The encoder is lmim's ViT with MAE's position table, so every probe reads it like Latent MIM's.
"""
import jax
import jax.numpy as jnp
import ml_collections as mlc

from lmim import losses, optim, views
from lmim.errors import ConfigError
from lmim.methods.base import GridMethod
from lmim.methods.common import dropout_keys_for, init_encoder, run
from lmim.models import build_decoder, build_encoder, validate_model


def add_config(c) -> None:
  """MAE's own fields, and its defaults for the shared ones (official pretraining recipe)."""
  c.mae = mlc.ConfigDict(dict(mask_ratio=0.75, norm_pix_loss=True))
  c.model.posemb = "mae"
  c.model.projector.depth = 0
  c.model.decoder.update(dict(type="self", width=512, depth=8, num_heads=16))
  c.optim.min_lr_frac = 0.0   # MAE: warmup from 0, cosine to 0


mae_decay = optim.timm_decay  # MAE's rule: timm's add_weight_decay


def validate(config) -> None:
  validate_model(config.model, projector=False)
  ratio = config.mae.mask_ratio
  num_patches = config.model.grid_size ** 2
  keep = int(num_patches * (1 - ratio))
  if not 0 < ratio < 1 or keep < 1 or keep >= num_patches:
    raise ConfigError("mae.mask_ratio", ratio, f"must keep between 1 and {num_patches - 1} of the "
                      f"{num_patches} patches, i.e. lie in (0, 1) with ⌊L·(1−ratio)⌋ ≥ 1")
  if config.model.decoder.get("type", "self") != "self":
    raise ConfigError("model.decoder.type", config.model.decoder.type, "'self' (MAE's decoder)")


class MAE(GridMethod):
  decay_rule = staticmethod(mae_decay)
  fields = "mae"  # the config block with mask_ratio and norm_pix_loss (CMAE reuses MAE with its own)

  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    f = config[self.fields]
    self.len_keep = int(self.num_patches * (1 - f.mask_ratio))
    self.norm_pix_loss = f.norm_pix_loss
    self.encoder = build_encoder(config.model, projector=False)
    self.decoder = build_decoder(config.model, out_dim=self.patch_dim, kind="self")  # pixels of a patch

  def init_autoencoder(self, k_enc, k_dec) -> dict:
    """The encoder and pixel decoder parameters."""
    enc = init_encoder(self.encoder, k_enc, self.len_keep, self.patch_dim)
    keep = jnp.arange(self.len_keep, dtype=jnp.int32)[None]
    rest = jnp.arange(self.len_keep, self.num_patches, dtype=jnp.int32)[None]
    latent = jnp.zeros((1, 1 + self.len_keep, self.width), jnp.float32)
    return {"encoder": enc, "decoder": self.decoder.init(k_dec, latent, keep, rest)["params"]}

  def init(self, rng):
    return self.init_autoencoder(*jax.random.split(rng)), None

  def forward(self, params, images, shuffle, dropout_keys=None):
    """All of MAE's intermediates for a given per-image shuffle (argsort of the noise)."""
    patches = views.patchify(images, self.patch_size, 0)                # (B, L, p·p·C)
    ids_restore = jnp.argsort(shuffle, axis=1)
    keep, removed = shuffle[:, :self.len_keep], shuffle[:, self.len_keep:]
    with jax.named_scope("online_encoder"):  # phase names: lmim.methods.base.PHASES
      encoded = run(self.encoder, params["encoder"], views.gather_tokens(patches, keep), keep,
                    dropout_keys=dropout_keys)
    latent = encoded["encoded"]
    with jax.named_scope("decoder"):
      out = run(self.decoder, params["decoder"], latent, keep, removed, dropout_keys=dropout_keys)  # [kept, removed]
    pred = views.gather_tokens(out, ids_restore)                        # back to grid order
    mask = (ids_restore >= self.len_keep).astype(jnp.float32)           # 1 = removed
    with jax.named_scope("loss"):
      loss = losses.norm_pix_mse(pred, patches, mask, self.norm_pix_loss)
    return dict(latent=latent, mask=mask, ids_restore=ids_restore, pred=pred, target_patches=patches,
                loss=loss, encoder_out=encoded, keep=keep)

  def loss(self, params, ema_params, batch, keys, step, train: bool = True):
    shuffle = (jnp.argsort(batch["noise"], axis=1) if "noise" in batch
               else views.draw_shuffle(keys, self.num_patches))
    out = self.forward(params, batch["image"], shuffle, dropout_keys_for((self.encoder, self.decoder), keys, train))
    return out["loss"], {"loss": out["loss"]}


METHOD = MAE
