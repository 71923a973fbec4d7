"""data2vec v1, vision (Baevski et al., ICML 2022) in lmim's house (docs/methods.md §5.1).

    mask    = BEiT block masking, ~120 of 196 patches (on device, static boolean grid)
    student = Encoder(all patches, masked ones replaced by a learned mask token)
    teacher = EMA of the student encoder on the same crop, unmasked
    target  = LN(mean_k LN(block_k output)) over the top K = 6 blocks, at masked positions
    pred    = Linear(D→D)(student final-LN output) at masked positions
    loss    = Smooth-L1 (β = 2), mean over masked tokens and channels
Backbone: lmim's ViT (absolute sin-cos positions, no layer-scale or relative bias), so the
comparison with Latent MIM and MAE varies only the objective; the official BEiT backbone
differs there.
"""
import jax
import jax.numpy as jnp
import ml_collections as mlc

from lmim import losses, schedules, views
from lmim.errors import ConfigError
from lmim.methods.common import GridMethod, ema_update, encode_full_images, init_encoder
from lmim.models import build_encoder, encoder_dims, validate_model
from lmim.models.layers import dense


def add_config(c) -> None:
  c.data2vec = mlc.ConfigDict(dict(
      mask_fraction=120 / 196,   # patches to mask (BEiT's num_mask_patches = 120 of 196)
      min_block_patches=16,      # smallest masked block
      top_k_layers=6,            # teacher blocks averaged into the target
      loss_beta=2.0,             # Smooth-L1 β
      momentum=0.9998,           # EMA: linear from `momentum` to `momentum_end` (released: constant)
      momentum_end=0.9998,
  ))
  c.model.posemb = "mae"
  c.model.projector.depth = 0
  c.optim.update(dict(blr=2e-3 * 256 / 2048, min_lr_frac=0.0, grad_clip_norm=3.0))


def validate(config) -> None:
  validate_model(config.model, decoder=False, projector=False)
  d, L = config.data2vec, config.model.grid_size ** 2
  n = int(round(d.mask_fraction * L))
  if not 1 <= n < L:
    raise ConfigError("data2vec.mask_fraction", d.mask_fraction, f"must mask between 1 and {L - 1} of {L} patches")
  if not 1 <= d.min_block_patches <= n:
    raise ConfigError("data2vec.min_block_patches", d.min_block_patches, f"must be in [1, {n}] (patches to mask)")
  depth = encoder_dims(config.model)["depth"]
  if not 1 <= d.top_k_layers <= depth:
    raise ConfigError("data2vec.top_k_layers", d.top_k_layers, f"must be in [1, {depth}] (encoder depth)")
  if not d.loss_beta > 0:
    raise ConfigError("data2vec.loss_beta", d.loss_beta, "must be > 0")


class Data2Vec(GridMethod):
  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    c = config
    self.num_mask = int(round(c.data2vec.mask_fraction * self.num_patches))
    self.encoder = build_encoder(c.model, projector=False, use_mask_token=True)
    self.head = dense(self.width, "head", jnp.float32)

  def init(self, rng):
    k_enc, k_head = jax.random.split(rng)
    enc = init_encoder(self.encoder, k_enc, self.num_patches, self.patch_dim)
    head = self.head.init(k_head, jnp.zeros((1, self.width)))["params"]
    return {"encoder": enc, "head": head}, jax.tree.map(jnp.copy, enc)

  def momentum(self, step):
    d = self.config.data2vec
    return schedules.linear(step, total_steps=self.config.total_steps, start=d.momentum, end=d.momentum_end)

  def update_targets(self, ema_params, params, step):
    return ema_update(ema_params, params["encoder"], self.momentum(step))

  def forward(self, params, ema_params, images, mask):
    patches = views.patchify(images, self.patch_size, 0)
    ids = jnp.broadcast_to(jnp.arange(self.num_patches, dtype=jnp.int32), patches.shape[:2])
    teacher = self.encoder.apply({"params": ema_params}, patches, ids)
    top = [losses.layer_norm_no_params(b[:, 1:]) for b in teacher["blocks"][-self.config.data2vec.top_k_layers:]]
    target = jax.lax.stop_gradient(losses.layer_norm_no_params(sum(top) / len(top)))
    student = self.encoder.apply({"params": params["encoder"]}, patches, ids, token_mask=mask)
    pred = self.head.apply({"params": params["head"]}, student["patches"])
    per_token = jax.vmap(jax.vmap(lambda p, t: losses.smooth_l1(p, t, self.config.data2vec.loss_beta)))(pred, target)
    m = mask.astype(jnp.float32)
    loss = jnp.sum(per_token * m) / jnp.maximum(m.sum(), 1.0)
    return dict(loss=loss, pred=pred, target=target)

  def loss(self, params, ema_params, batch, keys, step):
    mask = batch["token_mask"] if "token_mask" in batch else views.block_mask(
        keys, grid_size=self.grid_size, num_mask=self.num_mask,
        min_block=self.config.data2vec.min_block_patches)
    out = self.forward(params, ema_params, batch["image"], mask)
    return out["loss"], {"loss": out["loss"], "masked": mask.sum(axis=1).mean().astype(jnp.float32),
                         "sim_trg": losses.pairwise_sim(out["target"])}

  def encode(self, encoder_params, images):
    return encode_full_images(self.encoder, encoder_params, images, self.patch_size)


def build(config, channels: int) -> Data2Vec:
  validate(config)
  return Data2Vec(config, channels)
