"""I-JEPA (Assran et al., CVPR 2023), as facebookresearch/ijepa trains it (docs/methods.md §5.2).

    sizes    = per batch (src/masks/multiblock.py `MaskCollator`): one target size (h, w) and one
               context size for every image of the step; a single U(0, 1) draw sets both the
               scale (0.15–0.2 of the grid) and the aspect (0.75–1.5) of the target blocks, another
               the context's scale (0.85–1, square); sides rounded, then shrunk below the grid side
    targets  = 4 blocks of that size per image, placed uniformly (top in [0, g−h), as the official
               sampler: a block never touches the last row or column)
    context  = one block of the context size minus every target block
    s_x      = Encoder(context patches)                         no CLS token anywhere
    s_y      = LN(EMA-Encoder(all patches))[target block]       parameter-free LN on top
    ŝ_y      = Predictor(s_x, target positions), one sequence per target block (narrow ViT with
               the encoder's head count)
    loss     = Smooth-L1(ŝ_y, s_y) (β = 1, mean over every element of every target block)
Static shapes: the target blocks of a step all have h·w patches; lmim pads them to the largest
size the sampler can draw and masks the padding out of the predictor's attention and the loss,
so every target block is whole. The official code truncates every context to the batch minimum
(raster order); lmim keeps the first `context_tokens` context patches (a low percentile of the
context size, padded and masked when shorter). Optimiser as its `init_opt`: AdamW (0.9, 0.999),
no decay for biases and 1-D parameters, weight decay on a cosine from 0.04 to 0.4, lr warmup
from 2e-4 to 1e-3 then cosine to 1e-6; init N(0, 0.02²) for every Linear (trunc_normal with
±2 bounds, i.e. untruncated; `fix_init_weight`'s rescale is undone by `init_model`, as there).
"""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lmim import losses, optim, views
from lmim.errors import ConfigError
from lmim.methods.base import GridMethod, ema_config
from lmim.methods.common import init_encoder
from lmim.models import build_decoder, build_encoder, validate_model

SIZE_STREAM = 0x73697A65  # b"size": the per-step key of the block sizes


def add_config(c) -> None:
  c.ijepa = mlc.ConfigDict(dict(
      num_targets=4,
      target_scale=(0.15, 0.2), target_aspect=(0.75, 1.5),
      context_scale=(0.85, 1.0),
      min_context=10,                                        # fewest context tokens allowed
      context_tokens=mlc.FieldReference(None, field_type=int),  # static context length; None = auto
      loss_beta=1.0,
  ))
  c.ema = ema_config(0.996, 1.0, "linear")                 # linear EMA schedule
  c.model.posemb = "mae"
  c.model.projector.depth = 0
  c.model.init = "trunc_normal"
  c.model.decoder.update(dict(type="self", width=384, depth=12, num_heads=16))  # the predictor
  c.input.min_crop = 0.3
  c.input.flip = False
  c.optim.update(dict(b2=0.999, weight_decay=0.04, weight_decay_end=0.4, warmup_start_lr=2e-4, min_lr=1e-6))


def block_size(r, g: int, scale, aspect):
  """`_sample_block_size`: one draw r ~ U(0, 1) sets scale and aspect -> (h, w), sides < g.
  Works on numpy floats and traced jnp scalars alike."""
  s = scale[0] + r * (scale[1] - scale[0])
  keep = jnp.floor(g * g * s)
  ar = aspect[0] + r * (aspect[1] - aspect[0])
  h = jnp.minimum(jnp.round(jnp.sqrt(keep * ar)), g - 1).astype(jnp.int32)
  w = jnp.minimum(jnp.round(jnp.sqrt(keep / ar)), g - 1).astype(jnp.int32)
  return h, w


def largest_block(g: int, scale, aspect, samples: int = 20001) -> int:
  """The most patches a block of the sampler can have (its sizes are step functions of r)."""
  h, w = block_size(np.linspace(0.0, 1.0, samples), g, scale, aspect)
  return int(np.max(np.asarray(h) * np.asarray(w)))


def place_block(key, g: int, h, w):
  """A (g, g) bool rectangle of h×w at top ~ U{0..g−h−1}, left ~ U{0..g−w−1} (torch.randint(0, g−h))."""
  k_top, k_left = jax.random.split(key)
  top = jax.random.randint(k_top, (), 0, g - h)
  left = jax.random.randint(k_left, (), 0, g - w)
  rows, cols = jnp.arange(g)[:, None], jnp.arange(g)[None, :]
  return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)


def static_lengths(g: int, cfg, samples: int = 1024):
  """(target_tokens, context_tokens, fewest context tokens seen): the padded target length (the
  largest block), and the context length (cfg.context_tokens, else the 1st percentile of the
  context size under the sampler, by Monte Carlo with seed 0)."""
  target_tokens = largest_block(g, cfg.target_scale, cfg.target_aspect)
  rng = np.random.default_rng(0)
  counts = []
  for _ in range(samples):
    th, tw = (int(x) for x in block_size(rng.random(), g, cfg.target_scale, cfg.target_aspect))
    ch, cw = (int(x) for x in block_size(rng.random(), g, cfg.context_scale, (1.0, 1.0)))
    ctx = np.zeros((g, g), bool)
    t, l = rng.integers(0, g - ch), rng.integers(0, g - cw)
    ctx[t:t + ch, l:l + cw] = True
    for _ in range(cfg.num_targets):
      t, l = rng.integers(0, g - th), rng.integers(0, g - tw)
      ctx[t:t + th, l:l + tw] = False
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
  smallest = block_size(0.0, g, j.target_scale, j.target_aspect)
  if int(smallest[0]) < 1 or int(smallest[1]) < 1:
    raise ConfigError("ijepa.target_scale", tuple(j.target_scale), f"gives empty target blocks on a {g}x{g} grid")
  _, context_tokens, _ = static_lengths(g, j)
  if context_tokens < max(j.min_context, 1):
    raise ConfigError("ijepa.target_scale", tuple(j.target_scale),
                      f"{j.num_targets} target blocks leave {context_tokens} context tokens on a {g}x{g} "
                      f"grid, fewer than ijepa.min_context={j.min_context}: shrink the targets, use fewer "
                      "or a larger grid")
  if context_tokens > g * g:
    raise ConfigError("ijepa.context_tokens", context_tokens, f"at most {g * g} (the grid)")


class IJEPA(GridMethod):
  decay_rule = staticmethod(optim.ijepa_decay)

  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    c = config
    self.target_tokens, self.context_tokens, _ = static_lengths(self.grid_size, c.ijepa)
    self.encoder = build_encoder(c.model, projector=False, use_cls=False)
    self.predictor = build_decoder(c.model, out_dim=self.width, kind="self")  # target latents
    self.size_key = jax.random.fold_in(jax.random.key(c.seed), SIZE_STREAM)

  def init(self, rng):
    k_enc, k_pred = jax.random.split(rng)
    enc = init_encoder(self.encoder, k_enc, self.context_tokens, self.patch_dim)
    ctx = jnp.arange(self.context_tokens, dtype=jnp.int32)[None]
    tgt = jnp.arange(self.target_tokens, dtype=jnp.int32)[None]
    latent = jnp.zeros((1, self.context_tokens, self.width), jnp.float32)
    return {"encoder": enc, "predictor": self.predictor.init(k_pred, latent, ctx, tgt)["params"]}, \
        jax.tree.map(jnp.copy, enc)

  def block_sizes(self, step):
    """The step's target (h, w) and context (h, w): one draw each, shared by the whole batch (the
    collator's generator is seeded per batch), from a key that depends only on the run's seed and
    the step, so every device and micro-batch of a step agrees."""
    j, g = self.config.ijepa, self.grid_size
    r_target, r_context = jax.random.uniform(jax.random.fold_in(self.size_key, step), (2,))
    return block_size(r_target, g, j.target_scale, j.target_aspect), block_size(r_context, g, j.context_scale, (1.0, 1.0))

  def draw_masks(self, keys, step):
    """(B,) keys -> context ids (B, Kc), context valid (B, Kc), target ids (B, M, Kt), target valid
    (B, M, Kt): whole target blocks (padding marked invalid), the context truncated to Kc."""
    j, g = self.config.ijepa, self.grid_size
    (th, tw), (ch, cw) = self.block_sizes(step)

    def one(key):
      kc, kt = jax.random.split(key)
      targets = jax.vmap(lambda k: place_block(k, g, th, tw))(jax.random.split(kt, j.num_targets))  # (M, g, g)
      context = place_block(kc, g, ch, cw) & ~targets.any(axis=0)
      tgt_ids, tgt_valid = views.first_ids(targets.reshape(j.num_targets, -1), self.target_tokens)
      ctx_ids, ctx_valid = views.first_ids(context.reshape(-1), self.context_tokens)
      return ctx_ids, ctx_valid, tgt_ids, tgt_valid
    return jax.vmap(one)(keys)

  def forward(self, params, ema_params, images, ctx_ids, ctx_valid, tgt_ids, tgt_valid):
    patches = views.patchify(images, self.patch_size, 0)
    b, m, kt = tgt_ids.shape
    with jax.named_scope("target_encoder"):  # phase names: lmim.methods.base.PHASES
      full = self.encoder.apply({"params": ema_params}, patches, None)["patches"]
    full = jax.lax.stop_gradient(losses.layer_norm_no_params(full))
    target = views.gather_tokens(full, tgt_ids.reshape(b, m * kt)).reshape(b * m, kt, -1)
    with jax.named_scope("online_encoder"):
      s_x = self.encoder.apply({"params": params["encoder"]}, views.gather_tokens(patches, ctx_ids), ctx_ids,
                               key_mask=ctx_valid)["patches"]
    rep = lambda x: jnp.repeat(x, m, axis=0)   # one predictor sequence per target block
    valid = tgt_valid.reshape(b * m, kt)
    with jax.named_scope("decoder"):  # the predictor
      pred = self.predictor.apply({"params": params["predictor"]}, rep(s_x), rep(ctx_ids), tgt_ids.reshape(b * m, kt),
                                  visible_mask=rep(ctx_valid), query_mask=valid)[:, self.context_tokens:]
    per_elem = jax.vmap(jax.vmap(lambda p, t: losses.smooth_l1(p, t, self.config.ijepa.loss_beta)))(pred, target)
    w = valid.astype(jnp.float32)
    loss = jnp.sum(per_elem * w) / jnp.maximum(w.sum(), 1.0)  # the mean over every real element
    return dict(loss=loss, pred=pred, target=target, valid=valid)

  def loss(self, params, ema_params, batch, keys, step, train: bool = True):
    del train  # no dropout in I-JEPA
    ctx_ids, ctx_valid, tgt_ids, tgt_valid = self.draw_masks(keys, step)
    out = self.forward(params, ema_params, batch["image"], ctx_ids, ctx_valid, tgt_ids, tgt_valid)
    return out["loss"], {"loss": out["loss"], "context": ctx_valid.sum(1).mean().astype(jnp.float32),
                         "target": tgt_valid[:, 0].sum(1).mean().astype(jnp.float32),
                         "sim_trg": losses.pairwise_sim(out["target"])}


METHOD = IJEPA
