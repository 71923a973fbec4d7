"""data2vec v1, vision (Baevski et al., ICML 2022), as facebookresearch/data2vec_vision
(`beit/run_cyclical.py`, `engine_for_cyclical.py`, `modeling_cyclical.py`) trains ViT-B/16
(docs/methods.md §5.1).

    mask    = BEiT block masking, ~120 of 196 patches (on device, static boolean grid)
    student = BEiT encoder (all patches, masked ones replaced by a learned mask token), drop path
              0 → 0.25 over the blocks, attention dropout 0.05
    teacher = EMA of the student (constant 0.9998) on the same crop, unmasked, no dropout
    target  = LN(mean_k LN(block_k output)) over the top K = 6 blocks (after each block's
              residual, before the final norm), both LNs without affine, eps 1e-5, at masked positions
    pred    = Linear(D→D)(student final-LN output) at masked positions
    loss    = Smooth-L1 (β = 2), mean over masked tokens and channels
Backbone (BEiT, data2vec's `beit_base_patch16_224`): no absolute position table; one relative
position bias shared by every block (`--rel_pos_bias`, zeros at init); layer scale γ = 1e-4; q and
v biases, none on k; truncated-normal init (±1σ, std 0.02) with attn.proj and mlp.fc2 scaled by
1/√(2·layer). Weight decay as its `get_parameter_groups`: none for 1-D parameters, biases and the
CLS token (the mask token and the relative-position table do decay).
"""
import jax
import jax.numpy as jnp
import ml_collections as mlc

from lmim import losses, optim, views
from lmim.errors import ConfigError
from lmim.methods.base import GridMethod, ema_config
from lmim.methods.common import dropout_keys_for, init_encoder, run
from lmim.models import build_encoder, encoder_dims, validate_model
from lmim.models.layers import dense
from lmim.models.vit import rescale_by_depth


def add_config(c) -> None:
  c.data2vec = mlc.ConfigDict(dict(
      mask_fraction=120 / 196,   # patches to mask (BEiT's num_mask_patches = 120 of 196)
      min_block_patches=16,      # smallest masked block
      top_k_layers=6,            # teacher blocks averaged into the target
      loss_beta=2.0,             # Smooth-L1 β
      target_eps=1e-5,           # eps of the two parameter-free target LayerNorms (F.layer_norm's default)
  ))
  c.ema = ema_config(0.9998, 0.9998, "linear")  # EMA: linear from 0.9998 to 0.9998 (released: constant)
  c.model.update(dict(posemb="mae", abs_pos=False, rel_pos_bias=True, layer_scale=1e-4, qkv_bias="qv",
                      init="beit", drop_path=0.25, attn_drop=0.05))
  c.model.projector.depth = 0
  # AdamW with torch's default betas (the command gives no --opt_betas), lr 2e-3 at batch 2048,
  # warmup from 0, cosine to an absolute 1e-5, gradient clipping 3.0.
  c.optim.update(dict(blr=2e-3 * 256 / 2048, b2=0.999, min_lr=1e-5, warmup_start_lr=0.0, grad_clip_norm=3.0))
  c.input.update(dict(min_crop=0.08, color_jitter=0.4))  # ColorJitter(0.4, 0.4, 0.4), crop scale (0.08, 1)


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
  decay_rule = staticmethod(optim.data2vec_decay)

  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    c = config
    self.num_mask = int(round(c.data2vec.mask_fraction * self.num_patches))
    self.encoder = build_encoder(c.model, projector=False, use_mask_token=True)
    self.head = dense(self.width, "head", jnp.float32)

  def init(self, rng):
    k_enc, k_head = jax.random.split(rng)
    enc = init_encoder(self.encoder, k_enc, self.num_patches, self.patch_dim)
    if self.config.model.get("init") == "beit":
      enc = rescale_by_depth(enc)  # BEiT's fix_init_weight
    head = self.head.init(k_head, jnp.zeros((1, self.width)))["params"]
    return {"encoder": enc, "head": head}, jax.tree.map(jnp.copy, enc)

  def forward(self, params, ema_params, images, mask, dropout_keys=None):
    d = self.config.data2vec
    patches = views.patchify(images, self.patch_size, 0)
    with jax.named_scope("target_encoder"):  # phase names: lmim.methods.base.PHASES
      teacher = self.encoder.apply({"params": ema_params}, patches, None)  # the whole grid, unmasked
    top = [losses.layer_norm_no_params(b[:, 1:], d.target_eps) for b in teacher["blocks"][-d.top_k_layers:]]
    target = jax.lax.stop_gradient(losses.layer_norm_no_params(sum(top) / len(top), d.target_eps))
    with jax.named_scope("online_encoder"):
      student = run(self.encoder, params["encoder"], patches, None, token_mask=mask, dropout_keys=dropout_keys)
    with jax.named_scope("decoder"):  # the linear regression head
      pred = self.head.apply({"params": params["head"]}, student["patches"])
    per_token = jax.vmap(jax.vmap(lambda p, t: losses.smooth_l1(p, t, self.config.data2vec.loss_beta)))(pred, target)
    m = mask.astype(jnp.float32)
    loss = jnp.sum(per_token * m) / jnp.maximum(m.sum(), 1.0)
    return dict(loss=loss, pred=pred, target=target)

  def loss(self, params, ema_params, batch, keys, step, train: bool = True):
    mask = batch["token_mask"] if "token_mask" in batch else views.block_mask(
        keys, grid_size=self.grid_size, num_mask=self.num_mask,
        min_block=self.config.data2vec.min_block_patches)
    out = self.forward(params, ema_params, batch["image"], mask, dropout_keys_for((self.encoder,), keys, train))
    return out["loss"], {"loss": out["loss"], "masked": mask.sum(axis=1).mean().astype(jnp.float32),
                         "sim_trg": losses.pairwise_sim(out["target"])}


METHOD = Data2Vec
