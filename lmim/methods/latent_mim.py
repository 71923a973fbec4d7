"""Latent MIM (Wei, Gupta & Morgado, ECCV 2024) exactly as the official code computes it, plus
the paper's ablation axes as config switches.

One optimiser step (docs/latent_mim.md §1, §7), default switches:
    θ_T ← m·θ_T + (1−m)·θ_O                     EMA, once per step, before any target forward
    patches   = gap-patchify(images)             (B, L, p·p·C), random offset per cell
    visible, targets = split(argsort(noise))     Lv visible, Lt = L − Lv targets
    z_trg  = sg(TargetEnc(patches[targets]))     the target encoder sees only the targets
    z_vis  = OnlineEnc(patches[visible])         (B, 1+Lv, D), after the projector
    z_pred = Decoder(z_vis, visible, targets)    (B, Lt, D)
    loss   = PatchDisc(z_pred, z_trg) + c·(Sim(z_pred) − s_t)² + c·(Sim(z_vis) − s_t)²

Ablation axes (rows of the paper's tables):
    targets.mode      ema | shared_stopgrad (online weights, stop-gradient) | joint (online weights,
                      gradients flow through the targets) | independent (a separately initialised
                      target encoder trained jointly, no weight sharing)
    loss.name         patch_disc | norm_mse (official) | mse | l1 | huber (seed formulas)
    views.num_vis / views.patch_gap / sim_reg.coeff
    model.decoder.type cross (+ visual_cues) | self (MAE-style over [visible + mask tokens])
    model.projector.depth  0 = no projector
"""
import jax
import jax.numpy as jnp
import ml_collections as mlc

from lmim import losses, schedules, views
from lmim.errors import ConfigError
from lmim.methods.base import GridMethod, ema_config
from lmim.methods.common import init_encoder
from lmim.models import build_decoder, build_encoder, validate_model

TARGET_MODES = ("ema", "shared_stopgrad", "joint", "independent")


def add_config(c) -> None:
  """Latent MIM's fields (defaults = the official code's, docs/latent_mim.md §2)."""
  c.views = mlc.ConfigDict(dict(
      patch_gap=4,             # pixels between cells; train images are g·(p+gap) px, eval g·p px
      num_vis=20,              # visible patches per image (mask ratio 1 − 20/196 ≈ 0.9)
      mask_target=True,        # the target encoder sees only the targets (False: all patches)
  ))
  c.loss = mlc.ConfigDict(dict(
      name="patch_disc",       # patch_disc | norm_mse (official) | mse | l1 | huber (paper ablation)
      tau=0.2,                 # PatchDisc temperature
      # Huber: the paper's token-level form (½‖e‖² if ‖e‖ < δ, else δ(‖e‖₁ − δ/2)) or torch's
      # elementwise huber_loss; δ None = √D for 'token' (a token is quadratic once its prediction
      # is within √D of the target: for layer-normalised latents, cosine ≳ ½) and 1 for 'elementwise'.
      huber_form="token",
      huber_delta=mlc.FieldReference(None, field_type=float),
  ))
  c.sim_reg = mlc.ConfigDict(dict(
      coeff=0.1,               # c in c·(Sim − s_t)²; 0 disables (official yaml), 0.1 = README recipe
      start=0.75, end=0.25,    # s_t follows a cosine from start to end over training
      group_size=mlc.FieldReference(None, field_type=int),  # examples per Sim mean; None = micro-batch
  ))
  c.targets = mlc.ConfigDict(dict(
      mode="ema",              # ema | shared_stopgrad | joint | independent (paper's collapse table)
  ))
  c.ema = ema_config(0.99)     # EMA momentum m0 at step 0, cosine to 1 (targets.mode = 'ema')


def canonical_loss(name: str) -> str:
  name = losses.LOSS_ALIASES.get(name, name)
  if name not in losses.RECONSTRUCTION_LOSSES:
    valid = list(losses.RECONSTRUCTION_LOSSES) + list(losses.LOSS_ALIASES)
    raise ConfigError("loss.name", name, f"one of {valid}")
  return name


def validate(config) -> None:
  """Method-specific checks; every message names the field, the value and the valid range."""
  m, v = config.model, config.views
  validate_model(m)
  num_patches = m.grid_size ** 2
  if not 1 <= v.num_vis < num_patches:
    raise ConfigError("views.num_vis", v.num_vis,
                      f"must be in [1, {num_patches - 1}] (grid {m.grid_size}x{m.grid_size} has {num_patches} patches)")
  if v.patch_gap < 0:
    raise ConfigError("views.patch_gap", v.patch_gap, "must be >= 0 pixels")
  loss = canonical_loss(config.loss.name)
  if loss == "patch_disc" and not config.loss.tau > 0:
    raise ConfigError("loss.tau", config.loss.tau, "must be > 0")
  if num_patches - v.num_vis < 2 and loss in ("patch_disc",):
    raise ConfigError("views.num_vis", v.num_vis, "PatchDisc needs at least 2 targets per image")
  if loss == "huber":
    delta = config.loss.get("huber_delta")
    if delta is not None and not delta > 0:
      raise ConfigError("loss.huber_delta", delta, "None (√D token-level, 1 elementwise) or > 0")
    if config.loss.get("huber_form", "token") not in ("token", "elementwise"):
      raise ConfigError("loss.huber_form", config.loss.huber_form, "'token' (the paper's) or 'elementwise' (torch's)")
  if config.sim_reg.coeff < 0:
    raise ConfigError("sim_reg.coeff", config.sim_reg.coeff, "must be >= 0 (0 disables the regulariser)")
  micro = config.batch_size // max(config.accum_steps, 1)
  group = config.sim_reg.get("group_size")
  if group is not None and (group < 1 or micro % group):
    raise ConfigError("sim_reg.group_size", group,
                      f"must divide the micro-batch (batch_size/accum_steps = {micro})")
  if config.targets.mode not in TARGET_MODES:
    raise ConfigError("targets.mode", config.targets.mode, f"one of {list(TARGET_MODES)}")


class LatentMIM(GridMethod):
  """Networks, schedules and loss of Latent MIM; a Python constant closed over by the jitted step."""
  schedule_metrics = ("sim_target",)  # the Sim regulariser's target s_t

  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    c = config
    self.patch_gap = c.views.patch_gap
    self.num_vis = c.views.num_vis
    self.num_targets = self.num_patches - self.num_vis
    self.loss_name = canonical_loss(c.loss.name)
    self.target_mode = c.targets.mode
    self.encoder = build_encoder(c.model)
    self.decoder = build_decoder(c.model)

  # Geometry ---------------------------------------------------------------------------------
  @property
  def train_image_size(self) -> int:
    """Gap jitter: each cell of the training crop is p + gap px, one p-px patch drawn inside it."""
    return self.grid_size * (self.patch_size + self.patch_gap)

  # Parameters -------------------------------------------------------------------------------
  def init(self, rng):
    """(params, ema_params). With EMA targets, the target starts as an exact copy of the online
    encoder (docs/latent_mim.md §7); `independent` gives the target encoder its own initialisation."""
    k_enc, k_dec, k_trg = jax.random.split(rng, 3)
    patch_dim = self.patch_dim
    enc = init_encoder(self.encoder, k_enc, self.num_vis, patch_dim)
    ids = jnp.arange(self.num_vis, dtype=jnp.int32)[None]
    tgt = jnp.arange(self.num_vis, self.num_patches, dtype=jnp.int32)[None]
    latents = jnp.zeros((1, 1 + self.num_vis, self.width), jnp.float32)
    params = {"encoder": enc, "decoder": self.decoder.init(k_dec, latents, ids, tgt)["params"]}
    if self.target_mode == "independent":
      params["target_encoder"] = init_encoder(self.encoder, k_trg, self.num_vis, patch_dim)
    ema = jax.tree.map(jnp.copy, enc) if self.target_mode == "ema" else None
    return params, ema

  # Schedules --------------------------------------------------------------------------------
  def sim_target(self, step):
    r = self.config.sim_reg
    return schedules.sim_target(step, total_steps=self.config.total_steps, start=r.start, end=r.end)

  @property
  def loss_group(self) -> int:
    """The Sim regulariser averages over groups of `sim_reg.group_size` examples before squaring
    (docs/latent_mim.md §9.4)."""
    reg = self.config.sim_reg
    return int(reg.get("group_size") or 1) if reg.coeff > 0 else 1

  # Forward ----------------------------------------------------------------------------------
  def target_params(self, params, ema_params):
    """Which weights produce the targets, and whether gradients may flow through them."""
    if self.target_mode == "ema":
      return ema_params, False
    if self.target_mode == "independent":
      return params["target_encoder"], True
    return params["encoder"], self.target_mode == "joint"

  @property
  def huber_delta(self) -> float:
    d = self.config.loss.get("huber_delta")
    if d is not None:
      return float(d)
    return float(self.width) ** 0.5 if self.config.loss.get("huber_form", "token") == "token" else 1.0

  def reconstruction_loss(self, pred, target):
    name = self.loss_name
    if name == "patch_disc":
      return losses.patch_disc(pred, target, self.config.loss.tau)
    if name == "norm_mse":
      return losses.norm_mse(pred, target)
    if name == "huber":
      if self.config.loss.get("huber_form", "token") == "elementwise":
        return losses.huber_elementwise(pred, target, self.huber_delta)
      return losses.huber(pred, target, self.huber_delta)
    return {"mse": losses.mse, "l1": losses.l1}[name](pred, target)

  def forward(self, params, ema_params, images, shuffle, offsets, sim_target, dropout_keys=None):
    """Every intermediate of the official forward (the parity checkpoints of docs/latent_mim.md §14).
    `dropout_keys` (B,) turns on the online encoder's configured drop path / dropout (model.*)."""
    patches = views.patchify(images, self.patch_size, self.patch_gap, offsets)
    visible_idx, target_idx = shuffle[:, :self.num_vis], shuffle[:, self.num_vis:]
    # What the target encoder sees: the targets only, or every patch (targets last).
    encoded_idx = target_idx if self.config.views.mask_target else shuffle
    trg_params, trg_grad = self.target_params(params, ema_params)
    with jax.named_scope("target_encoder"):  # phase names: lmim.methods.base.PHASES
      target_out = self.encoder.apply({"params": trg_params}, views.gather_tokens(patches, encoded_idx),
                                      encoded_idx)["projected"]
    z_trg = target_out[:, -self.num_targets:]
    if not trg_grad:
      z_trg = jax.lax.stop_gradient(z_trg)
    with jax.named_scope("online_encoder"):
      z_vis = self.encoder.apply({"params": params["encoder"]}, views.gather_tokens(patches, visible_idx), visible_idx,
                                 deterministic=dropout_keys is None, dropout_keys=dropout_keys)["projected"]
    with jax.named_scope("decoder"):
      pred, inter = self.decoder.apply({"params": params["decoder"]}, z_vis, visible_idx, target_idx,
                                       mutable=["intermediates"])
    z_pred = pred[:, -self.num_targets:]  # cross decoder: CLS first; self decoder: visible first
    with jax.named_scope("loss"):
      loss_main = self.reconstruction_loss(z_pred, z_trg)
      coeff, group = self.config.sim_reg.coeff, self.config.sim_reg.group_size or images.shape[0]
      loss = loss_main
      if coeff > 0:
        loss = loss + coeff * (losses.sim_regularizer(z_pred, sim_target, group)
                               + losses.sim_regularizer(z_vis[:, 1:], sim_target, group))
    queries = inter.get("intermediates", {}).get("queries", (None,))[0]
    # Keys are the official code's names for these tensors (its parity checkpoints).
    return dict(patch_pix=patches, vis_idx=visible_idx, mask_idx=target_idx, trg_idx=encoded_idx,
                target_out=target_out, x_trg=z_trg, x_vis=z_vis, decoder_queries_in=queries,
                x_pred=z_pred, loss_main=loss_main, loss_total=loss)

  def loss(self, params, ema_params, batch, keys, step, train: bool = True):
    """Scalar loss and metrics for one micro-batch; views drawn from per-example `keys`
    (`train=False`: no dropout, for evaluators that read the method's metrics)."""
    if "shuffle" in batch:  # injected views (fixtures, tests)
      shuffle, offsets = batch["shuffle"], batch["offsets"]
    else:
      shuffle, offsets = views.draw_views(keys, grid_size=self.grid_size, gap=self.patch_gap)
    s_t = self.sim_target(step)
    drop = views.dropout_keys(keys) if train and self.encoder.has_dropout else None
    out = self.forward(params, ema_params, batch["image"], shuffle, offsets, s_t, drop)
    metrics = dict(loss=out["loss_total"], loss_main=out["loss_main"],
                   sim_pred=losses.pairwise_sim(out["x_pred"]),
                   sim_vis=losses.pairwise_sim(out["x_vis"][:, 1:]),
                   sim_trg=losses.pairwise_sim(out["x_trg"]),
                   std_pred=normalized_std(out["x_pred"]), std_trg=normalized_std(out["x_trg"]),
                   sim_target=s_t)
    if self.loss_name == "huber" and self.config.loss.get("huber_form", "token") == "token":
      metrics["huber_quadratic_frac"] = losses.huber_quadratic_fraction(out["x_pred"], out["x_trg"], self.huber_delta)
    return out["loss_total"], metrics


def normalized_std(z):
  """Per-dimension std of L2-normalised tokens over all tokens, times √D: ≈1 healthy, →0 collapsed."""
  zn = losses.l2_normalize(z.astype(jnp.float32)).reshape(-1, z.shape[-1])
  return jnp.std(zn, axis=0).mean() * jnp.sqrt(z.shape[-1])


METHOD = LatentMIM
