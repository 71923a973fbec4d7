"""Latent MIM (Wei, Gupta & Morgado, ECCV 2024) exactly as the official code computes it.

One optimiser step (spec §1, §7):
    θ_T ← m·θ_T + (1−m)·θ_O                     EMA, once per step, before any target forward
    patches   = gap-patchify(images)             (B, L, p·p·C), random offset per cell
    visible, targets = split(argsort(noise))     Lv visible, Lt = L − Lv targets
    z_trg  = sg(TargetEnc(patches[targets]))     the target encoder sees only the targets
    z_vis  = OnlineEnc(patches[visible])         (B, 1+Lv, D), after the projector
    z_pred = Decoder(z_vis, visible, targets)    (B, Lt, D)
    loss   = PatchDisc(z_pred, z_trg) + c·(Sim(z_pred) − s_t)² + c·(Sim(z_vis) − s_t)²
"""
import jax
import jax.numpy as jnp

from lmim import losses, schedules, views
from lmim.errors import ConfigError
from lmim.models import build_decoder, build_encoder, compute_dtype, encoder_dims


def canonical_loss(name: str) -> str:
  name = losses.LOSS_ALIASES.get(name, name)
  if name not in losses.RECONSTRUCTION_LOSSES:
    valid = list(losses.RECONSTRUCTION_LOSSES) + list(losses.LOSS_ALIASES)
    raise ConfigError("loss.name", name, f"one of {valid}")
  return name


def validate(config) -> None:
  """Method-specific checks; every message names the field, the value and the valid range."""
  m, v = config.model, config.views
  dims = encoder_dims(m)
  compute_dtype(m)
  width, heads = dims["width"], dims["num_heads"]
  if width % heads:
    raise ConfigError("model.num_heads", heads, f"must divide the encoder width {width}")
  if width % 4:
    raise ConfigError("model.width", width, "must be divisible by 4 (2-D sin-cos position embeddings)")
  dw, dh = m.decoder.width, m.decoder.num_heads
  if dw % dh:
    raise ConfigError("model.decoder.num_heads", dh, f"must divide the decoder width {dw}")
  if dw % 4:
    raise ConfigError("model.decoder.width", dw, "must be divisible by 4 (2-D sin-cos position embeddings)")
  if m.grid_size < 2:
    raise ConfigError("model.grid_size", m.grid_size, "must be >= 2")
  if m.projector.depth < 0 or m.projector.depth > 8:
    raise ConfigError("model.projector.depth", m.projector.depth, "0 (no projector) to 8")
  if m.decoder.depth < 1:
    raise ConfigError("model.decoder.depth", m.decoder.depth, "must be >= 1")
  num_patches = m.grid_size ** 2
  if not 1 <= v.num_vis < num_patches:
    raise ConfigError("views.num_vis", v.num_vis,
                      f"must be in [1, {num_patches - 1}] (grid {m.grid_size}x{m.grid_size} has {num_patches} patches)")
  if v.patch_gap < 0:
    raise ConfigError("views.patch_gap", v.patch_gap, "must be >= 0 pixels")
  loss = canonical_loss(config.loss.name)
  if loss == "patch_disc" and not config.loss.tau > 0:
    raise ConfigError("loss.tau", config.loss.tau, "must be > 0")
  if num_patches - v.num_vis < 2 and loss == "patch_disc":
    raise ConfigError("views.num_vis", v.num_vis, "PatchDisc needs at least 2 targets per image")
  if config.sim_reg.coeff < 0:
    raise ConfigError("sim_reg.coeff", config.sim_reg.coeff, "must be >= 0 (0 disables the regulariser)")
  if not 0.0 <= config.ema.momentum <= 1.0:
    raise ConfigError("ema.momentum", config.ema.momentum, "must be in [0, 1]")


class LatentMIM:
  """Networks, schedules and loss of Latent MIM; a Python constant closed over by the jitted step."""

  def __init__(self, config, channels: int):
    c = self.config = config
    self.channels = channels
    dims = encoder_dims(c.model)
    self.patch_size, self.width = dims["patch_size"], dims["width"]
    self.grid_size, self.gap = c.model.grid_size, c.views.patch_gap
    self.num_patches = self.grid_size ** 2
    self.num_vis = c.views.num_vis
    self.num_targets = self.num_patches - self.num_vis
    self.loss_name = canonical_loss(c.loss.name)
    self.encoder = build_encoder(c.model)
    self.decoder = build_decoder(c.model)

  # Geometry ---------------------------------------------------------------------------------
  @property
  def train_image_size(self) -> int:
    return self.grid_size * (self.patch_size + self.gap)

  @property
  def eval_image_size(self) -> int:
    return self.grid_size * self.patch_size

  # Parameters -------------------------------------------------------------------------------
  def init(self, rng):
    """(params, ema_params): online encoder + decoder, and the target encoder as a copy."""
    k_enc, k_dec = jax.random.split(rng)
    ids = jnp.arange(self.num_vis, dtype=jnp.int32)[None]
    tgt = jnp.arange(self.num_vis, self.num_patches, dtype=jnp.int32)[None]
    patches = jnp.zeros((1, self.num_vis, self.patch_size ** 2 * self.channels), jnp.float32)
    enc = self.encoder.init(k_enc, patches, ids)["params"]
    latents = jnp.zeros((1, 1 + self.num_vis, self.width), jnp.float32)
    dec = self.decoder.init(k_dec, latents, ids, tgt)["params"]
    # The official target starts as an exact copy of the online encoder (spec §7).
    return {"encoder": enc, "decoder": dec}, jax.tree.map(jnp.copy, enc)

  # Schedules --------------------------------------------------------------------------------
  def momentum(self, step):
    return schedules.ema_momentum(step, total_steps=self.config.total_steps, base=self.config.ema.momentum)

  def sim_target(self, step):
    r = self.config.sim_reg
    return schedules.sim_target(step, total_steps=self.config.total_steps, start=r.start, end=r.end)

  def update_targets(self, ema_params, params, step):
    """θ_T ← m·θ_T + (1−m)·θ_O over the whole encoder, projector included (not the decoder)."""
    return ema_update(ema_params, params["encoder"], self.momentum(step))

  # Forward ----------------------------------------------------------------------------------
  def forward(self, params, ema_params, images, shuffle, offsets, sim_target):
    """Every intermediate of the official forward (the parity checkpoints of spec §14)."""
    patches = views.patchify(images, self.patch_size, self.gap, offsets)
    vis_idx, mask_idx = shuffle[:, :self.num_vis], shuffle[:, self.num_vis:]
    trg_idx = mask_idx if self.config.views.mask_target else shuffle
    target_out = self.encoder.apply({"params": ema_params}, views.gather_tokens(patches, trg_idx),
                                    trg_idx)["projected"]
    z_trg = jax.lax.stop_gradient(target_out[:, -self.num_targets:])
    z_vis = self.encoder.apply({"params": params["encoder"]}, views.gather_tokens(patches, vis_idx),
                               vis_idx)["projected"]
    pred, inter = self.decoder.apply({"params": params["decoder"]}, z_vis, vis_idx, mask_idx,
                                     mutable=["intermediates"])
    z_pred = pred[:, 1:]
    if self.loss_name == "patch_disc":
      loss_main = losses.patch_disc(z_pred, z_trg, self.config.loss.tau)
    else:
      loss_main = losses.norm_mse(z_pred, z_trg)
    coeff, group = self.config.sim_reg.coeff, self.config.sim_reg.group_size or images.shape[0]
    loss = loss_main
    if coeff > 0:
      loss = loss + coeff * (losses.sim_regularizer(z_pred, sim_target, group)
                             + losses.sim_regularizer(z_vis[:, 1:], sim_target, group))
    return dict(patch_pix=patches, vis_idx=vis_idx, mask_idx=mask_idx, trg_idx=trg_idx,
                target_out=target_out, x_trg=z_trg, x_vis=z_vis,
                decoder_queries_in=inter["intermediates"]["queries"][0], x_pred=z_pred,
                loss_main=loss_main, loss_total=loss)

  def loss(self, params, ema_params, batch, keys, step):
    """Scalar loss and metrics for one micro-batch; views drawn from per-example `keys`."""
    if "shuffle" in batch:  # injected views (fixtures, tests)
      shuffle, offsets = batch["shuffle"], batch["offsets"]
    else:
      shuffle, offsets = views.draw_views(keys, grid_size=self.grid_size, gap=self.gap)
    s_t = self.sim_target(step)
    out = self.forward(params, ema_params, batch["image"], shuffle, offsets, s_t)
    metrics = dict(loss=out["loss_total"], loss_main=out["loss_main"],
                   sim_pred=losses.pairwise_sim(out["x_pred"]),
                   sim_vis=losses.pairwise_sim(out["x_vis"][:, 1:]),
                   sim_trg=losses.pairwise_sim(out["x_trg"]),
                   std_pred=normalized_std(out["x_pred"]), std_trg=normalized_std(out["x_trg"]),
                   sim_target=s_t)
    return out["loss_total"], metrics

  # Probing ----------------------------------------------------------------------------------
  def encode(self, encoder_params, images):
    """Full images at gap 0 (the evaluation geometry) -> the encoder's named representations."""
    patches = views.patchify(images, self.patch_size, 0)
    ids = jnp.broadcast_to(jnp.arange(patches.shape[1], dtype=jnp.int32), patches.shape[:2])
    return self.encoder.apply({"params": encoder_params}, patches, ids)


def ema_update(target, online, momentum):
  """θ_T·m + θ_O·(1−m), leaf by leaf (the official operation order)."""
  return jax.tree.map(lambda t, o: t * momentum + o * (1.0 - momentum), target, online)


def normalized_std(z):
  """Per-dimension std of L2-normalised tokens over all tokens, times √D: ≈1 healthy, →0 collapsed."""
  zn = losses.l2_normalize(z.astype(jnp.float32)).reshape(-1, z.shape[-1])
  return jnp.std(zn, axis=0).mean() * jnp.sqrt(z.shape[-1])


def build(config, channels: int) -> LatentMIM:
  validate(config)
  return LatentMIM(config, channels)
