"""I-JEPA (Assran et al., CVPR 2023) in lmim's house (docs/methods.md §5.2).

    targets  = 4 blocks per image (scale 0.15–0.2 of the grid, aspect 0.75–1.5)
    context  = one block (scale 0.85–1, square) minus every target block
    s_x      = Encoder(context patches)                         no CLS token anywhere
    s_y      = LN(EMA-Encoder(all patches))[target block]       parameter-free LN on top
    ŝ_y      = Predictor(s_x, target positions), one pass per target block (narrow ViT)
    loss     = Smooth-L1(ŝ_y, s_y) (β = 1, as the code; the paper says L2), mean over blocks
Static shapes: the official sampler truncates every mask to the batch-minimum length; here the
lengths are fixed when the method is built — each target block keeps its first `target_tokens`
patches (the smallest block the sampler can draw) and the context its first `context_tokens`
(a low percentile of the context size; the rare shorter context is padded and masked out of
attention). Block sizes are drawn per image (the official code draws them per batch).
"""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lmim import losses, schedules, views
from lmim.errors import ConfigError
from lmim.methods.common import GridMethod, ema_update, encode_full_images, init_encoder
from lmim.models import build_decoder, build_encoder, validate_model


def add_config(c) -> None:
  c.ijepa = mlc.ConfigDict(dict(
      num_targets=4,
      target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
      context_scale=(0.85, 1.0),
      min_context=10,                                        # fewest context tokens allowed
      context_tokens=mlc.FieldReference(None, field_type=int),  # static context length; None = auto
      momentum=0.996, momentum_end=1.0,                      # linear EMA schedule
      loss_beta=1.0,
  ))
  c.model.posemb = "mae"
  c.model.projector.depth = 0
  c.model.decoder.update(dict(type="self", width=384, depth=6, num_heads=12))  # the predictor
  c.input.min_crop = 0.3
  c.input.flip = False
  c.optim.update(dict(min_lr_frac=0.0))


def _sizes(rng, g, scale, aspect, n):
  """Host copy of the block-size sampler (numpy), for the static lengths."""
  area = rng.uniform(scale[0], scale[1], n) * g * g
  ar = rng.uniform(aspect[0], aspect[1], n)
  h = np.clip(np.round(np.sqrt(area * ar)), 1, max(g - 1, 1)).astype(int)
  w = np.clip(np.round(np.sqrt(area / ar)), 1, max(g - 1, 1)).astype(int)
  return h, w


def static_lengths(g: int, cfg, samples: int = 4096):
  """(target_tokens, context_tokens, min context seen) by Monte Carlo over the sampler (seed 0)."""
  rng = np.random.default_rng(0)
  th, tw = _sizes(rng, g, cfg.target_scale, cfg.target_aspect, samples)
  target_tokens = int((th * tw).min())
  ch, cw = _sizes(rng, g, cfg.context_scale, (1.0, 1.0), samples)
  counts = []
  for i in range(min(samples, 1024)):
    ctx = np.zeros((g, g), bool)
    t, l = rng.integers(0, g - ch[i] + 1), rng.integers(0, g - cw[i] + 1)
    ctx[t:t + ch[i], l:l + cw[i]] = True
    h, w = _sizes(rng, g, cfg.target_scale, cfg.target_aspect, cfg.num_targets)
    for j in range(cfg.num_targets):
      t, l = rng.integers(0, g - h[j] + 1), rng.integers(0, g - w[j] + 1)
      ctx[t:t + h[j], l:l + w[j]] = False
    counts.append(ctx.sum())
  context_tokens = cfg.context_tokens or int(np.percentile(counts, 1))
  return target_tokens, context_tokens, int(min(counts))


def validate(config) -> None:
  validate_model(config.model, projector=False)
  j, g = config.ijepa, config.model.grid_size
  for name in ("target_scale", "context_scale"):
    lo, hi = j[name]
    if not 0 < lo <= hi <= 1:
      raise ConfigError(f"ijepa.{name}", tuple(j[name]), "(lo, hi) with 0 < lo ≤ hi ≤ 1 (fractions of the grid)")
  if not 0 < j.target_aspect[0] <= j.target_aspect[1]:
    raise ConfigError("ijepa.target_aspect", tuple(j.target_aspect), "(lo, hi) with 0 < lo ≤ hi")
  if j.num_targets < 1:
    raise ConfigError("ijepa.num_targets", j.num_targets, "must be >= 1")
  target_tokens, context_tokens, _ = static_lengths(g, j)
  if target_tokens < 1:
    raise ConfigError("ijepa.target_scale", tuple(j.target_scale), f"gives empty target blocks on a {g}x{g} grid")
  if context_tokens < max(j.min_context, 1):
    raise ConfigError("ijepa.target_scale", tuple(j.target_scale),
                      f"{j.num_targets} target blocks leave {context_tokens} context tokens on a {g}x{g} "
                      f"grid, fewer than ijepa.min_context={j.min_context}: shrink the targets, use fewer "
                      "or a larger grid")
  if context_tokens > g * g:
    raise ConfigError("ijepa.context_tokens", context_tokens, f"at most {g * g} (the grid)")


class IJEPA(GridMethod):
  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    c = config
    self.target_tokens, self.context_tokens, _ = static_lengths(self.grid_size, c.ijepa)
    self.encoder = build_encoder(c.model, projector=False, use_cls=False)
    self.predictor = build_decoder(c.model, out_dim=self.width, kind="self")  # target latents

  def init(self, rng):
    k_enc, k_pred = jax.random.split(rng)
    enc = init_encoder(self.encoder, k_enc, self.context_tokens, self.patch_dim)
    ctx = jnp.arange(self.context_tokens, dtype=jnp.int32)[None]
    tgt = jnp.arange(self.target_tokens, dtype=jnp.int32)[None]
    latent = jnp.zeros((1, self.context_tokens, self.width), jnp.float32)
    return {"encoder": enc, "predictor": self.predictor.init(k_pred, latent, ctx, tgt)["params"]}, \
        jax.tree.map(jnp.copy, enc)

  def momentum(self, step):
    j = self.config.ijepa
    return schedules.linear(step, total_steps=self.config.total_steps, start=j.momentum, end=j.momentum_end)

  def update_targets(self, ema_params, params, step):
    return ema_update(ema_params, params["encoder"], self.momentum(step))

  def draw_masks(self, keys):
    """(B,) keys -> context ids (B, Kc), context valid (B, Kc), target ids (B, M, Kt)."""
    j, g = self.config.ijepa, self.grid_size

    def one(key):
      kc, kt = jax.random.split(key)
      tk = jax.random.split(kt, j.num_targets)
      targets = jax.vmap(lambda k: random_block(k, g, j.target_scale, j.target_aspect))(tk)  # (M, g, g)
      context = random_block(kc, g, j.context_scale, (1.0, 1.0)) & ~targets.any(axis=0)
      tgt_ids, _ = views.first_ids(targets.reshape(j.num_targets, -1), self.target_tokens)
      ctx_ids, ctx_valid = views.first_ids(context.reshape(-1), self.context_tokens)
      return ctx_ids, ctx_valid, tgt_ids
    return jax.vmap(one)(keys)

  def forward(self, params, ema_params, images, ctx_ids, ctx_valid, tgt_ids):
    patches = views.patchify(images, self.patch_size, 0)
    b, m, kt = tgt_ids.shape
    all_ids = jnp.broadcast_to(jnp.arange(self.num_patches, dtype=jnp.int32), patches.shape[:2])
    full = self.encoder.apply({"params": ema_params}, patches, all_ids)["patches"]
    full = jax.lax.stop_gradient(losses.layer_norm_no_params(full))
    target = views.gather_tokens(full, tgt_ids.reshape(b, m * kt)).reshape(b * m, kt, -1)
    s_x = self.encoder.apply({"params": params["encoder"]}, views.gather_tokens(patches, ctx_ids), ctx_ids,
                             key_mask=ctx_valid)["patches"]
    rep = lambda x: jnp.repeat(x, m, axis=0)   # one predictor pass per target block
    queries = tgt_ids.reshape(b * m, kt)
    pred = self.predictor.apply({"params": params["predictor"]}, rep(s_x), rep(ctx_ids), queries,
                                visible_mask=rep(ctx_valid))[:, self.context_tokens:]
    return dict(loss=losses.smooth_l1(pred, target, self.config.ijepa.loss_beta), pred=pred, target=target)

  def loss(self, params, ema_params, batch, keys, step):
    ctx_ids, ctx_valid, tgt_ids = self.draw_masks(keys)
    out = self.forward(params, ema_params, batch["image"], ctx_ids, ctx_valid, tgt_ids)
    return out["loss"], {"loss": out["loss"], "context": ctx_valid.sum(1).mean().astype(jnp.float32),
                         "sim_trg": losses.pairwise_sim(out["target"])}

  def encode(self, encoder_params, images):
    return encode_full_images(self.encoder, encoder_params, images, self.patch_size)


def random_block(key, g, scale, aspect):
  return views.random_block(key, grid_size=g, scale=scale, aspect=aspect)


def build(config, channels: int) -> IJEPA:
  validate(config)
  return IJEPA(config, channels)
