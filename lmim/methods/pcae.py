"""PCAE (Li et al., ICLR 2023): Progressively Compressed Auto-Encoder (docs/methods.md §3).

As caddyless/PCAE `models_mae.py` / `engine_pretrain.py` compute it. One random mask per image
(MAE's argsort of noise, ratio 0.75):
    student:  Encoder(patches[visible])                    CLS + 49 visible tokens (ViT-B/16),
              drop path 0 → 0.25 over the blocks (model.drop_path)
    teacher:  EMA encoder on the 147 *masked* patches, without the CLS token, no drop path, with
              progressive token reduction: after each drop layer keep the tokens least similar to
              the mean token (147 → 73 → 36 → 18), then the final LayerNorm and a per-token
              standardisation (unbiased variance + 1e-6)
    decoder:  self-attention over [CLS, visible, mask tokens at the 18 retained positions],
              drop path 0.25 in every block (model.decoder.drop_path)
    loss:     1 − cos(prediction, target) at the retained positions
Weight decay is timm's `add_weight_decay` (PCAE's optimiser), not Latent MIM's rule.
The teacher's compute shrinks stage by stage and the decoder reconstructs only ~10% of the image,
which is PCAE's saving over MAE (visible in `python -m lmim.benchmark` FLOPs). `random_drop`
replaces the similarity ranking by a random choice (the paper's "RD" ablation).
"""
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np

from lmim import losses, optim, views
from lmim.errors import ConfigError
from lmim.methods.base import GridMethod, ema_config
from lmim.methods.common import dropout_keys_for, init_encoder, run
from lmim.models import build_decoder, build_encoder, encoder_dims, validate_model

DROP_CASES = (0, 1, 2, 3)


def add_config(c) -> None:
  c.pcae = mlc.ConfigDict(dict(
      mask_ratio=0.75,
      drop_case=0,           # 0: start of each stage, 1: end, 2: evenly spread, 3: first layers
      num_stages=3,          # reductions in the teacher
      keep_ratio=0.5,        # fraction of tokens kept at each reduction
      random_drop=False,     # "RD": random instead of similarity ranking
  ))
  c.ema = ema_config(0.9999)   # teacher EMA momentum, cosine to 1, updated every step
  c.model.posemb = "mae"
  c.model.projector.depth = 0
  c.model.drop_path = 0.25     # student encoder: linear ramp 0 -> 0.25 (PCAE's --drop_path)
  c.model.decoder.update(dict(type="self", width=512, depth=8, num_heads=16, drop_path=0.25))
  c.optim.min_lr_frac = 0.0


def drop_layers(depth: int, stages: int, case: int) -> list[int]:
  """The teacher blocks after which tokens are dropped (0-indexed), per PCAE's drop cases."""
  if case == 0:
    return [depth // stages * i for i in range(stages)]
  if case == 1:
    return [depth // stages * (i + 1) - 1 for i in range(stages)]
  if case == 2:
    return [int(x) for x in np.linspace(0, depth - 1, stages)]
  return list(range(stages))


def stage_counts(num_masked: int, stages: int, keep_ratio: float) -> list[int]:
  """Token counts entering the teacher and after each reduction: [147, 73, 36, 18] by default."""
  counts = [num_masked]
  for _ in range(stages):
    counts.append(int(counts[-1] * keep_ratio))
  return counts


def validate(config) -> None:
  validate_model(config.model, projector=False)
  if config.model.get("scan_layers"):
    raise ConfigError("model.scan_layers", True, "False for PCAE: token reduction between blocks "
                      "changes the sequence length, which a scan over layers cannot carry")
  p, num_patches = config.pcae, config.model.grid_size ** 2
  keep = int(num_patches * (1 - p.mask_ratio))
  if not 0 < p.mask_ratio < 1 or keep < 1 or keep >= num_patches:
    raise ConfigError("pcae.mask_ratio", p.mask_ratio, f"must keep between 1 and {num_patches - 1} patches")
  if p.drop_case not in DROP_CASES:
    raise ConfigError("pcae.drop_case", p.drop_case, f"one of {list(DROP_CASES)}")
  depth = encoder_dims(config.model)["depth"]
  if not 1 <= p.num_stages <= depth:
    raise ConfigError("pcae.num_stages", p.num_stages, f"must be in [1, {depth}] (encoder depth)")
  counts = stage_counts(num_patches - keep, p.num_stages, p.keep_ratio)
  if not 0 < p.keep_ratio <= 1 or counts[-1] < 1:
    raise ConfigError("pcae.keep_ratio", p.keep_ratio,
                      f"keeps {counts} tokens per stage; every stage must keep at least 1 (raise "
                      "keep_ratio or lower num_stages/mask_ratio)")
  if len(set(drop_layers(depth, p.num_stages, p.drop_case))) != p.num_stages:
    raise ConfigError("pcae.num_stages", p.num_stages, f"drop case {p.drop_case} needs distinct layers")


class PCAE(GridMethod):
  decay_rule = staticmethod(optim.timm_decay)

  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    c = config
    self.len_keep = int(self.num_patches * (1 - c.pcae.mask_ratio))
    self.counts = stage_counts(self.num_patches - self.len_keep, c.pcae.num_stages, c.pcae.keep_ratio)
    layers = drop_layers(encoder_dims(c.model)["depth"], c.pcae.num_stages, c.pcae.drop_case)
    self.reduce = tuple(zip(layers, self.counts[1:]))
    self.encoder = build_encoder(c.model, projector=False)
    self.teacher = self.encoder.clone(use_cls=False)  # same weights (EMA), the CLS token left out
    self.decoder = build_decoder(c.model, out_dim=self.width, kind="self")  # teacher latents

  def init(self, rng):
    k_enc, k_dec = jax.random.split(rng)
    enc = init_encoder(self.encoder, k_enc, self.len_keep, self.patch_dim)
    vis = jnp.arange(self.len_keep, dtype=jnp.int32)[None]
    qry = jnp.arange(self.len_keep, self.len_keep + self.counts[-1], dtype=jnp.int32)[None]
    latent = jnp.zeros((1, 1 + self.len_keep, self.width), jnp.float32)
    dec = self.decoder.init(k_dec, latent, vis, qry)["params"]
    return {"encoder": enc, "decoder": dec}, jax.tree.map(jnp.copy, enc)

  def forward(self, params, ema_params, images, shuffle, drop_key=None, dropout_keys=None):
    patches = views.patchify(images, self.patch_size, 0)
    visible, masked = shuffle[:, :self.len_keep], shuffle[:, self.len_keep:]
    with jax.named_scope("target_encoder"):  # phase names: lmim.methods.base.PHASES
      teacher = self.teacher.apply({"params": ema_params}, views.gather_tokens(patches, masked), masked,
                                   reduce=self.reduce, reduce_key=drop_key)
    retained = teacher["ids"]                                               # (B, counts[-1])
    t = teacher["patches"]  # engine_pretrain.py: (t − mean) / (var_unbiased + 1e-6)^½ per token
    t = (t - t.mean(-1, keepdims=True)) / jnp.sqrt(jnp.var(t, axis=-1, keepdims=True, ddof=1) + 1e-6)
    target = jax.lax.stop_gradient(t)
    with jax.named_scope("online_encoder"):
      latent = run(self.encoder, params["encoder"], views.gather_tokens(patches, visible), visible,
                   dropout_keys=dropout_keys)["encoded"]
    with jax.named_scope("decoder"):
      pred = run(self.decoder, params["decoder"], latent, visible, retained,
                 dropout_keys=dropout_keys)[:, self.len_keep:]
    return dict(loss=losses.cosine_distance(pred, target), retained=retained, pred=pred, target=target)

  def loss(self, params, ema_params, batch, keys, step, train: bool = True):
    shuffle = views.draw_shuffle(keys, self.num_patches)
    drop_key = jax.vmap(jax.random.fold_in, (0, None))(keys, 1) if self.config.pcae.random_drop else None
    out = self.forward(params, ema_params, batch["image"], shuffle, drop_key,
                       dropout_keys_for((self.encoder, self.decoder), keys, train))
    return out["loss"], {"loss": out["loss"], "sim_pred": losses.pairwise_sim(out["pred"]),
                         "sim_trg": losses.pairwise_sim(out["target"])}


METHOD = PCAE
