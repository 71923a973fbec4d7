"""Every recipe as its authors ran it: the pieces where lmim follows each official code base —
stochastic depth and dropout in pretraining, the token-level Huber, data2vec's BEiT backbone and
recipe, PCAE's teacher, I-JEPA's optimiser, CMAE's InfoNCE, the per-method weight-decay rules,
ColorJitter. (The ablation ladder's setting is in test_shipped_configs.py, I-JEPA's masks in
test_method_invariants.py.)"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image, ImageEnhance

from configs import data2vec_vitb16_in1k, ijepa_in1k, lmim_ablations
from lmim import config_lib, losses, methods, optim, train, views
from lmim.trees import path_name
from lmim.data import transforms
from lmim.models import layers
from lmim.models.vit import Encoder, relative_position_index
from tiny import tiny_config


def build(method, **overrides):
  cfg = config_lib.resolve(tiny_config(method, **overrides), 4000)
  return methods.build(cfg, 1)


###################################################################################################
# Stochastic depth and dropout in pretraining.
###################################################################################################


@pytest.mark.slow
def test_regularisers_are_off_by_default_in_every_latent_mim_and_mae_recipe():
  for method in ("latent_mim", "mae", "cmae", "ijepa"):
    m = config_lib.base_config(method).model
    assert (m.drop_path, m.attn_drop, m.proj_drop, m.decoder.drop_path) == (0.0, 0.0, 0.0, 0.0), method
  m = build("latent_mim")
  params, ema = m.init(jax.random.key(0))
  batch = {"image": jnp.asarray(np.random.default_rng(0).random((8, 20, 20, 1)), jnp.float32)}
  keys = views.example_keys(jax.random.key(1), jnp.arange(8))
  train_loss = m.loss(params, ema, batch, keys, 0)[0]
  assert float(train_loss) == float(m.loss(params, ema, batch, keys, 0, train=False)[0])


def test_drop_path_keeps_its_survival_rate_and_follows_the_example_not_its_row():
  keys = views.example_keys(jax.random.key(0), jnp.arange(4000))
  x = jnp.ones((4000, 3, 2))
  out = layers.drop_path(x, 0.3, keys, layers.DROP_PATH_ATTN, deterministic=False)
  dropped = np.asarray(out[:, 0, 0] == 0.0)
  assert abs(dropped.mean() - 0.3) < 0.03                       # 7 σ of a Bernoulli(0.3) over 4,000
  np.testing.assert_allclose(np.asarray(out[~dropped]), 1 / 0.7, rtol=1e-6)  # survivors rescaled
  assert not np.any(layers.drop_path(x, 0.3, keys, 0, deterministic=True) == 0)
  # The same example keeps its draw wherever it sits in the batch (the key is the example's).
  perm = np.random.default_rng(0).permutation(4000)
  again = layers.drop_path(x[perm], 0.3, keys[perm], layers.DROP_PATH_ATTN, deterministic=False)
  np.testing.assert_array_equal(np.asarray(again), np.asarray(out)[perm])


@pytest.mark.slow
def test_an_encoder_in_training_mode_drops_per_example_and_needs_its_keys():
  enc = Encoder(width=16, depth=2, num_heads=2, grid_size=2, projector_depth=0, drop_path=0.5, attn_drop=0.2)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 4, 3)), jnp.float32)
  params = enc.init(jax.random.key(0), x, None)["params"]
  keys = views.dropout_keys(views.example_keys(jax.random.key(1), jnp.arange(6)))
  a = enc.apply({"params": params}, x, None, deterministic=False, dropout_keys=keys)["encoded"]
  swapped = enc.apply({"params": params}, x[::-1], None, deterministic=False, dropout_keys=keys[::-1])["encoded"]
  np.testing.assert_allclose(np.asarray(swapped)[::-1], np.asarray(a), rtol=1e-5, atol=1e-6)
  plain = enc.apply({"params": params}, x, None)["encoded"]
  assert not np.allclose(np.asarray(a), np.asarray(plain))
  with pytest.raises(ValueError, match="dropout_keys"):
    enc.apply({"params": params}, x, None, deterministic=False)


###################################################################################################
# Latent MIM's Huber row.
###################################################################################################


@pytest.fixture(scope="module")
def huber_run(tmp_path_factory):
  """The ladder's Huber row at runlocal size, 24 steps at a higher lr: real latents of a model in
  the middle of learning (the raw-latent rows end up collapsing, every token then quadratic)."""
  cfg = lmim_ablations.get_config("row=loss_huber,runlocal")
  cfg.total_steps, cfg.checkpoint.every_steps, cfg.log_every_steps, cfg.optim.blr = 24, 24, 4, 1.5e-3
  cfg.evals.nn.every_steps = 24
  wd = str(tmp_path_factory.mktemp("huber"))
  out = train.train(cfg, wd, devices=jax.devices()[:1])
  return cfg, out["state"], wd


@pytest.mark.slow
def test_huber_row_differs_from_l1_and_uses_both_branches_on_real_latents(huber_run):
  cfg, state, _ = huber_run
  setup = train.prepare(cfg, jax.devices()[:1])
  m = setup.method
  local = next(train.train_batches(setup, 0))
  images = jnp.asarray(local["image"][0])
  keys = views.example_keys(jax.random.key(7), jnp.arange(images.shape[0]))
  shuffle, offsets = views.draw_views(keys, grid_size=m.grid_size, gap=m.patch_gap)
  out = m.forward(jax.device_get(state.params), jax.device_get(state.ema_params), images, shuffle, offsets, 0.5)
  pred, target = out["x_pred"], out["x_trg"]
  delta = m.huber_delta
  assert delta == pytest.approx(m.width ** 0.5)                   # δ = √D by default
  frac = float(losses.huber_quadratic_fraction(pred, target, delta))
  assert 0.05 < frac < 0.95, frac                                 # both branches on these latents
  h, l1 = float(losses.huber(pred, target, delta)), float(losses.l1(pred, target))
  assert abs(h - (l1 - 0.5)) > 1.0                                # not "L1 − ½" (δ = 1's Huber)
  gh = jax.grad(lambda p: losses.huber(p, target, delta))(pred)
  gl = jax.grad(lambda p: losses.l1(p, target))(pred)
  cos = float(jnp.sum(gh * gl) / (jnp.linalg.norm(gh) * jnp.linalg.norm(gl)))
  assert cos < 0.99, cos                                          # the gradients point elsewhere
  # δ = 1 (the old default) on the same latents: every token linear, Huber = L1 − ½ exactly.
  assert float(losses.huber_quadratic_fraction(pred, target, 1.0)) == 0.0
  assert float(losses.huber(pred, target, 1.0)) == pytest.approx(l1 - 0.5, rel=1e-6)


def test_huber_logs_its_quadratic_fraction_and_offers_torchs_elementwise_form(huber_run):
  _, _, wd = huber_run
  from lmim.metrics_writer import read_jsonl  # pylint: disable=import-outside-toplevel
  fracs = [r["huber_quadratic_frac"] for r in read_jsonl(f"{wd}/metrics.jsonl") if "huber_quadratic_frac" in r]
  assert fracs[0] == 0.0 and fracs[-1] > 0.05 and fracs == sorted(fracs)  # linear first, then both
  p = jnp.asarray([[[0.5, 3.0]]])
  t = jnp.zeros_like(p)
  assert float(losses.huber_elementwise(p, t, 1.0)) == pytest.approx((0.5 * 0.25 + (3.0 - 0.5)) / 2)
  m = build("latent_mim", **{"loss.name": "huber", "loss.huber_form": "elementwise"})
  assert m.huber_delta == 1.0


###################################################################################################
# data2vec: the BEiT backbone and the recipe of its command.
###################################################################################################


@pytest.mark.slow
def test_data2vec_encoder_is_beits_with_layer_scale_and_a_shared_relative_position_bias():
  m = build("data2vec", **{"model.grid_size": 4})
  params, _ = m.init(jax.random.key(0))
  enc = params["encoder"]
  g, heads, width = 4, 2, 32
  assert enc["rel_pos_bias"]["table"].shape == ((2 * g - 1) ** 2 + 3, heads)
  assert np.all(np.asarray(enc["rel_pos_bias"]["table"]) == 0)                 # zeros at init
  assert not any(k.startswith("rel_pos") for k in enc["blocks_0"])             # one table, shared
  assert "pos_embed" not in enc                                               # no absolute positions
  for b in ("blocks_0", "blocks_1"):
    for gamma in ("gamma_1", "gamma_2"):
      np.testing.assert_array_equal(np.asarray(enc[b][gamma]), np.full(width, 1e-4, np.float32))
    attn = enc[b]["attn"]
    assert "bias" not in attn["qkv"] and attn["q_bias"].shape == attn["v_bias"].shape == (width,)
  k = np.asarray(enc["blocks_0"]["attn"]["qkv"]["kernel"])
  assert np.abs(k).max() <= 0.02 and 0.008 < k.std() < 0.013               # N(0, .02²) cut at ±1σ
  fc2 = [np.asarray(enc[f"blocks_{i}"]["mlp"]["fc2"]["kernel"]) for i in (0, 1)]
  assert np.abs(fc2[0]).max() <= 0.02 / np.sqrt(2) + 1e-7 and np.abs(fc2[1]).max() <= 0.02 / 2 + 1e-7  # /√(2l)
  # BEiT's index: patch pairs by (Δrow, Δcol), then CLS→patch, patch→CLS, CLS→CLS.
  rows, cols = np.divmod(np.arange(g * g), g)
  idx = np.asarray(relative_position_index(rows[None], cols[None], g, (2 * g - 1) ** 2, True))[0]
  n = (2 * g - 1) ** 2
  assert idx[0, 0] == n + 2 and set(idx[0, 1:]) == {n} and set(idx[1:, 0]) == {n + 1}
  assert idx[1, 1] == (g - 1) * (2 * g - 1) + (g - 1) and idx[1, 2] == idx[1, 1] - 1


def test_data2vec_recipe_is_its_commands():
  c = data2vec_vitb16_in1k.get_config()
  assert (c.model.drop_path, c.model.attn_drop, c.model.layer_scale) == (0.25, 0.05, 1e-4)
  assert (c.model.rel_pos_bias, c.model.abs_pos, c.model.qkv_bias, c.model.init) == (True, False, "qv", "beit")
  assert (c.optim.b1, c.optim.b2, c.optim.min_lr, c.optim.warmup_start_lr) == (0.9, 0.999, 1e-5, 0.0)
  assert (c.input.color_jitter, c.input.min_crop, c.data2vec.target_eps) == (0.4, 0.08, 1e-5)
  lr = optim.lr_schedule(c.optim, peak_lr=2e-3, total_steps=1000, warmup_steps=10)
  assert float(lr(0)) == 0.0 and float(lr(10)) == pytest.approx(2e-3) and float(lr(1000)) == pytest.approx(1e-5)


@pytest.mark.slow
def test_data2vec_targets_use_layer_norms_without_affine_at_eps_1e_5():
  m = build("data2vec")
  params, ema = m.init(jax.random.key(0))
  images = jnp.asarray(np.random.default_rng(0).random((2, 16, 16, 1)), jnp.float32)
  mask = jnp.zeros((2, 16), bool).at[:, :5].set(True)
  out = m.forward(params, ema, images, mask)
  teacher = m.encoder.apply({"params": ema}, views.patchify(images, 4, 0), None)
  ln = lambda x: (x - x.mean(-1, keepdims=True)) / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5)
  top = [ln(b[:, 1:]) for b in teacher["blocks"][-2:]]
  np.testing.assert_allclose(np.asarray(out["target"]), np.asarray(ln(sum(top) / 2)), atol=1e-5)


###################################################################################################
# PCAE, I-JEPA, CMAE.
###################################################################################################


@pytest.mark.slow
def test_pcae_teacher_has_no_cls_and_the_student_drops_paths():
  c = config_lib.base_config("pcae")
  assert (c.model.drop_path, c.model.decoder.drop_path) == (0.25, 0.25)
  m = build("pcae")
  assert m.teacher.use_cls is False and m.encoder.use_cls is True
  params, ema = m.init(jax.random.key(0))
  patches = jnp.ones((2, 5, 16))
  ids = jnp.broadcast_to(jnp.arange(5), (2, 5))
  out = m.teacher.apply({"params": ema}, patches, ids)
  assert out["encoded"].shape == (2, 5, 32) and "cls" not in out      # 5 tokens, none of them CLS
  # The teacher's output does not depend on the CLS token at all.
  other = dict(ema, cls_token=ema["cls_token"] + 10.0)
  np.testing.assert_array_equal(np.asarray(m.teacher.apply({"params": other}, patches, ids)["encoded"]),
                                np.asarray(out["encoded"]))


def test_ijepa_recipe_is_its_yaml_and_init_opt():
  c = ijepa_in1k.get_config()
  assert (c.optim.b2, c.optim.weight_decay, c.optim.weight_decay_end) == (0.999, 0.04, 0.4)
  assert (c.optim.lr, c.optim.warmup_start_lr, c.optim.min_lr) == (1e-3, 2e-4, 1e-6)
  assert (c.model.decoder.width, c.model.decoder.depth, c.model.decoder.num_heads) == (384, 12, 16)  # ViT-H's heads
  assert c.model.init == "trunc_normal" and ijepa_in1k.get_config("variant=B/16").model.decoder.num_heads == 12
  lr = optim.lr_schedule(c.optim, peak_lr=1e-3, total_steps=1000, warmup_steps=100)
  assert float(lr(0)) == pytest.approx(2e-4) and float(lr(100)) == pytest.approx(1e-3)
  assert float(lr(1000)) == pytest.approx(1e-6)


def test_cmae_contrastive_loss_is_moco_v3s():
  a = jnp.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  b = jnp.asarray([[1.0, 0.2], [0.3, 1.0], [-1.0, 1.0]])
  tau = 0.2
  an, bn = a / jnp.linalg.norm(a, axis=1, keepdims=True), b / jnp.linalg.norm(b, axis=1, keepdims=True)

  def ctr(q, k):  # MoCo v3: CrossEntropy(q·kᵀ/τ, arange) · 2τ
    logits = np.asarray(q @ k.T) / tau
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    return -np.mean(np.diag(logp)) * 2 * tau
  assert float(losses.info_nce(a, b, tau)) == pytest.approx(ctr(an, bn) + ctr(bn, an), rel=1e-5)


###################################################################################################
# Weight decay: each method's own rule, by parameter name.
###################################################################################################


def _decayed(method):
  m = build(method)
  params, _ = m.init(jax.random.key(0))
  rule = getattr(m, "decay_rule", optim.official_decay)
  mask = optim.decay_mask(params, rule)
  flat = jax.tree_util.tree_flatten_with_path(mask)[0]
  return {path_name(p): bool(v) for p, v in flat}


@pytest.mark.slow
def test_each_method_decays_the_parameters_its_official_optimiser_decays():
  lmim = _decayed("latent_mim")                   # the official Latent MIM rule: "embed" exempt
  assert not lmim["encoder/embed/proj/kernel"] and lmim["encoder/cls_token"] and lmim["decoder/mask_token"]
  for method in ("mae", "pcae", "cmae"):          # timm's add_weight_decay: tokens and embeddings decay
    d = _decayed(method)
    assert d["encoder/embed/proj/kernel"] and d["encoder/cls_token"] and d["decoder/mask_token"], method
    assert not d["encoder/blocks_0/attn/qkv/bias"] and not d["encoder/norm/scale"], method
  d2v = _decayed("data2vec")                      # + no decay for the CLS token
  assert not d2v["encoder/cls_token"] and d2v["encoder/mask_token"] and d2v["encoder/rel_pos_bias/table"]
  assert not d2v["encoder/blocks_0/attn/q_bias"] and not d2v["encoder/blocks_0/gamma_1"]
  assert d2v["encoder/embed/proj/kernel"] and d2v["head/kernel"] and not d2v["head/bias"]
  ij = _decayed("ijepa")                          # 1-D and anything named "bias" exempt
  assert ij["encoder/embed/proj/kernel"] and ij["predictor/mask_token"] and not ij["predictor/blocks_0/mlp/fc1/bias"]


###################################################################################################
# ColorJitter (data2vec's pipeline).
###################################################################################################


def test_color_jitter_is_torchvisions_on_pil_images():
  img = np.random.default_rng(0).integers(0, 256, (12, 10, 3), dtype=np.uint8)
  rng = np.random.default_rng(3)
  got = transforms.color_jitter(img, rng, 0.4)
  replay = np.random.default_rng(3)
  order, factors = replay.permutation(4), [replay.uniform(0.6, 1.4) for _ in range(3)]
  pil = Image.fromarray(img)
  for fn in order:
    if fn < 3:
      pil = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)[fn](pil).enhance(factors[fn])
  np.testing.assert_array_equal(got, np.asarray(pil))
  assert not np.array_equal(got, img)
  assert transforms.color_jitter(img, rng, 0.0) is img


# The EMA momentum of each official code, at steps 0, T/4, T/2 and T of a 100-step run; MAE and
# CMAE (as reconstructed here) have no momentum target.
OFFICIAL_MOMENTUM = {
    "latent_mim": [0.99, 1 - 0.01 * (1 + np.cos(np.pi / 4)) / 2, 0.995, 1.0],     # cosine 0.99 -> 1
    "pcae": [0.9999, 1 - 1e-4 * (1 + np.cos(np.pi / 4)) / 2, 0.99995, 1.0],       # cosine 0.9999 -> 1
    "data2vec": [0.9998] * 4,                                                     # constant
    "ijepa": [0.996, 0.997, 0.998, 1.0],                                          # linear 0.996 -> 1
    "mae": None, "cmae": None,
}


@pytest.mark.parametrize("method", list(OFFICIAL_MOMENTUM))
def test_each_method_reads_its_official_momentum_from_the_one_ema_block(method):
  m = build(method, total_steps=100)
  got = [m.momentum(s) for s in (0, 25, 50, 100)]
  if OFFICIAL_MOMENTUM[method] is None:
    assert got == [None] * 4 and "ema" not in m.config
    return
  np.testing.assert_allclose([float(g) for g in got], OFFICIAL_MOMENTUM[method], rtol=0, atol=2e-7)
  # ... and the block is the one knob: moving ema.momentum moves the schedule's start.
  assert float(build(method, total_steps=100, **{"ema.momentum": 0.5}).momentum(0)) == pytest.approx(0.5)
