"""CMAE (Mao et al., arXiv 2205.10546): MAE with a smaller decoder, a contrastive task and a token
position-prediction task on the encoder, and ContrastiveCrop views (docs/methods.md §1–§2).

The paper's text was not available; this follows the reconstruction in docs/methods.md §1.3,
every choice a knob:
    v1, v2   = two ContrastiveCrop views of each image (RandomResizedCrop until the first boxes)
    per view: MAE masking 0.75, encoder on the visible tokens, a 2×256 pixel decoder, norm-pix MSE
    L_con    = MoCo v3's symmetric InfoNCE between projected CLS tokens of v1 and v2:
               2τ·(CE(z1·z2ᵀ/τ) + CE(z2·z1ᵀ/τ)), batch negatives, τ 0.2
    L_pos    = cross entropy of each visible token of v2, encoded WITHOUT position embeddings,
               against its patch index (MP3-style: with positions added the task is trivial)
    L        = L_rec + λ_con·L_con + λ_pos·L_pos
ContrastiveCrop boxes come from the model itself: the L2 norm of every patch token of the last
block (before the final LayerNorm) on the un-augmented training image, min-max normalised,
upsampled, thresholded at k; the box bounds all activated pixels. They are recomputed on a
schedule (warmup and interval = 20% of training by default), kept on the host per dataset index,
and saved with the checkpoint (item `host_state`).
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lmim import data, inference, losses, views
from lmim.errors import ConfigError
from lmim.methods.common import dropout_keys_for
from lmim.methods.mae import MAE
from lmim.models import layers, validate_model


def add_config(c) -> None:
  c.cmae = mlc.ConfigDict(dict(
      mask_ratio=0.75, norm_pix_loss=True,
      con_weight=1.0, con_tau=0.2, con_feature="cls",       # 'cls' or 'mean' of visible tokens
      con_hidden=2048, con_dim=256,
      pos_weight=1.0,
      ccrop=dict(enabled=True, alpha=0.1, box_thresh=0.1,   # Beta(α, α) centres; heatmap threshold k
                 warmup_frac=0.2, interval_frac=0.2, batch_size=256),
  ))
  c.model.posemb = "mae"
  c.model.projector.depth = 0
  c.model.decoder.update(dict(type="self", width=256, depth=2, num_heads=8))
  c.optim.min_lr_frac = 0.0


def validate(config) -> None:
  validate_model(config.model, projector=False)
  k, L = config.cmae, config.model.grid_size ** 2
  keep = int(L * (1 - k.mask_ratio))
  if not 0 < k.mask_ratio < 1 or keep < 1 or keep >= L:
    raise ConfigError("cmae.mask_ratio", k.mask_ratio, f"must keep between 1 and {L - 1} patches")
  if k.con_feature not in ("cls", "mean"):
    raise ConfigError("cmae.con_feature", k.con_feature, "'cls' or 'mean'")
  if not k.con_tau > 0:
    raise ConfigError("cmae.con_tau", k.con_tau, "must be > 0")
  for name in ("con_weight", "pos_weight"):
    if k[name] < 0:
      raise ConfigError(f"cmae.{name}", k[name], "must be >= 0")
  c = k.ccrop
  if not 0 < c.alpha:
    raise ConfigError("cmae.ccrop.alpha", c.alpha, "must be > 0 (Beta(α, α) parameter)")
  if not 0 <= c.box_thresh < 1:
    raise ConfigError("cmae.ccrop.box_thresh", c.box_thresh, "must be in [0, 1)")
  for name in ("warmup_frac", "interval_frac"):
    if not 0 < c[name] <= 1:
      raise ConfigError(f"cmae.ccrop.{name}", c[name], "must be in (0, 1] (fraction of training)")


class ContrastHead(nn.Module):
  """Projector for the contrastive task: Linear → LN → GELU → Linear."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x):
    x = layers.gelu(layers.layer_norm("norm0")(layers.dense(self.hidden, "linear0", jnp.float32)(x)))
    return layers.dense(self.out, "linear1", jnp.float32)(x)


def boxes_from_heatmaps(heat: np.ndarray, image_size: int, thresh: float) -> np.ndarray:
  """ContrastiveCrop's localisation: (N, g, g) activation maps -> (N, 4) boxes (h0, w0, h1, w1) in
  [0, 1]: min-max normalise, upsample bilinearly to the image, bound every pixel above `thresh`."""
  heat = np.asarray(heat, np.float32)
  lo = heat.min(axis=(1, 2), keepdims=True)
  span = np.maximum(heat.max(axis=(1, 2), keepdims=True) - lo, 1e-12)
  up = np.asarray(jax.image.resize((heat - lo) / span, (len(heat), image_size, image_size), "bilinear"))
  rows, cols = up.max(axis=2) > thresh, up.max(axis=1) > thresh
  first = lambda m: np.where(m.any(1), m.argmax(1), 0)
  last = lambda m: np.where(m.any(1), m.shape[1] - 1 - m[:, ::-1].argmax(1), m.shape[1] - 1)
  return np.stack([first(rows), first(cols), last(rows), last(cols)], 1).astype(np.float32) / image_size


class CMAE(MAE):
  """MAE's reconstruction on each of two views, plus a contrastive and a position-prediction head."""
  num_views = 2
  fields = "cmae"

  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    c = config
    self.con_head = ContrastHead(c.cmae.con_hidden, c.cmae.con_dim)
    self.pos_head = layers.dense(self.num_patches, "pos_head", jnp.float32)
    total = config.total_steps
    self.box_warmup = max(1, int(round(c.cmae.ccrop.warmup_frac * total)))
    self.box_interval = max(1, int(round(c.cmae.ccrop.interval_frac * total)))

  def init(self, rng):
    k = jax.random.split(rng, 4)
    return {**self.init_autoencoder(k[0], k[1]),
            "con_head": self.con_head.init(k[2], jnp.zeros((1, self.width)))["params"],
            "pos_head": self.pos_head.init(k[3], jnp.zeros((1, self.width)))["params"]}, None

  # One view: MAE reconstruction ------------------------------------------------------------------
  def _view(self, params, images, shuffle, dropout_keys=None):
    out = MAE.forward(self, params, images, shuffle, dropout_keys)
    enc = out["encoder_out"]
    feat = enc["cls"] if self.config.cmae.con_feature == "cls" else enc["patches"].mean(axis=1)
    return out["loss"], feat, out["target_patches"], out["keep"]

  def forward(self, params, image1, image2, shuffle1, shuffle2, dropout_keys=(None, None)):
    k = self.config.cmae
    rec1, f1, _, _ = self._view(params, image1, shuffle1, dropout_keys[0])
    rec2, f2, patches2, keep2 = self._view(params, image2, shuffle2, dropout_keys[1])
    z1 = self.con_head.apply({"params": params["con_head"]}, f1)
    z2 = self.con_head.apply({"params": params["con_head"]}, f2)
    con = losses.info_nce(z1, z2, k.con_tau)
    # Position prediction from a pass WITHOUT position embeddings (else a linear head reads them back).
    u = self.encoder.apply({"params": params["encoder"]}, views.gather_tokens(patches2, keep2), keep2,
                           add_positions=False)["patches"]
    logits = self.pos_head.apply({"params": params["pos_head"]}, u)
    pos = losses.cross_entropy(logits, keep2)
    pos_acc = jnp.mean((logits.argmax(-1) == keep2).astype(jnp.float32))
    rec = 0.5 * (rec1 + rec2)
    loss = rec + k.con_weight * con + k.pos_weight * pos
    return dict(loss=loss, rec=rec, con=con, pos=pos, pos_acc=pos_acc)

  def loss(self, params, ema_params, batch, keys, step, train: bool = True):
    k1 = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
    k2 = jax.vmap(jax.random.fold_in, (0, None))(keys, 2)
    nets = (self.encoder, self.decoder)
    out = self.forward(params, batch["image"], batch["image2"], views.draw_shuffle(k1, self.num_patches),
                       views.draw_shuffle(k2, self.num_patches),
                       (dropout_keys_for(nets, k1, train), dropout_keys_for(nets, k2, train)))
    return out["loss"], {k: v for k, v in out.items()}

  # ContrastiveCrop boxes: host state ---------------------------------------------------------------
  def host_state_init(self, num_examples: int) -> dict:
    boxes = np.tile(np.array([0.0, 0.0, 1.0, 1.0], np.float32), (num_examples, 1))
    return {"boxes": boxes, "active": np.zeros((), np.int32)}

  def host_state_due(self, step: int) -> bool:
    """Recompute boxes after this many steps? From the end of warmup, every interval, not at the end."""
    cc = self.config.cmae.ccrop
    return (cc.enabled and step >= self.box_warmup and (step - self.box_warmup) % self.box_interval == 0
            and step < self.config.total_steps)

  def pipeline_args(self, host_state) -> dict:
    """ContrastiveCrop: the boxes and Beta(α, α) centres for the input pipeline once the first
    boxes are computed; before that, plain RandomResizedCrop (no extra arguments)."""
    if host_state is None or not int(np.asarray(host_state["active"])):
      return {}
    return {"boxes": np.asarray(host_state["boxes"], np.float32), "alpha": float(self.config.cmae.ccrop.alpha)}

  def heatmap(self, encoder_params, images):
    """(B, g, g) token activation mass: L2 norm of last-block patch tokens, before the final LN."""
    reps = self.encode(encoder_params, images)
    norms = jnp.linalg.norm(reps["pre_norm"][:, 1:], axis=-1)
    return norms.reshape(-1, self.grid_size, self.grid_size)

  def compute_host_state(self, params, ema_params, source, info, mesh) -> dict:
    """Boxes for every training image from the current online encoder, on the un-augmented
    images squashed to the evaluation size (ContrastiveCrop's localisation pass)."""
    batches = data.eval_batches(source, info, image_size=self.eval_image_size,
                                batch_size=self.config.cmae.ccrop.batch_size, resize="full",
                                process_index=jax.process_index(), process_count=jax.process_count())
    heat, _ = inference.extract_fn(self.heatmap, params["encoder"], batches, mesh)
    boxes = boxes_from_heatmaps(heat, self.eval_image_size, self.config.cmae.ccrop.box_thresh)
    return {"boxes": boxes, "active": np.ones((), np.int32)}


METHOD = CMAE
