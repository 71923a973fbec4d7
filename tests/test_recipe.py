"""Schedules, optimiser rule and the official recipe as a config."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import lmim_vitb16_in1k
from lmim import config_lib, losses, methods, optim, schedules, train
from lmim.models import encoder_dims
from tiny import tiny_config


def test_learning_rate_warms_up_from_the_floor_then_cosines_to_it():
  lr = lambda s: float(schedules.learning_rate(s, peak=1.0, total_steps=100, warmup_steps=10, min_lr_frac=0.25))
  assert lr(0) == pytest.approx(0.25)         # warmup starts at min_lr, not 0 (official)
  assert lr(5) == pytest.approx(0.625)
  assert lr(10) == pytest.approx(1.0)
  assert lr(55) == pytest.approx(0.625)
  assert lr(100) == pytest.approx(0.25)


def test_momentum_and_sim_target_schedules():
  m = lambda s: float(schedules.ema_momentum(s, total_steps=100, base=0.99))
  assert m(0) == pytest.approx(0.99) and m(50) == pytest.approx(0.995) and m(100) == pytest.approx(1.0)
  assert float(schedules.ema_momentum(25, total_steps=100, base=0.5, end=0.9)) == pytest.approx(
      0.9 - 0.5 * (1 + np.cos(np.pi / 4)) * 0.4)
  lin = lambda s: float(schedules.ema_momentum(s, total_steps=100, base=0.996, end=1.0, schedule="linear"))
  assert lin(0) == pytest.approx(0.996) and lin(25) == pytest.approx(0.997) and lin(100) == pytest.approx(1.0)
  t = lambda s: float(schedules.sim_target(s, total_steps=100, start=0.75, end=0.25))
  assert t(0) == pytest.approx(0.75) and t(50) == pytest.approx(0.5) and t(100) == pytest.approx(0.25)


def test_official_weight_decay_rule():
  rule = optim.official_decay
  assert rule("encoder/blocks_0/attn/qkv/kernel", 2) and rule("encoder/cls_token", 3)
  assert rule("decoder/mask_token", 3) and rule("encoder/head/linear0/kernel", 2)
  assert not rule("encoder/embed/proj/kernel", 2)   # "embed" in the name: no decay (official)
  assert not rule("decoder/embed/kernel", 2) and not rule("encoder/pos_embed", 2)
  assert not rule("encoder/blocks_0/norm1/scale", 1) and not rule("encoder/blocks_0/attn/qkv/bias", 1)


def test_gradient_clipping_is_applied_when_set():
  """With clipping, the AdamW state sees the clipped gradient (global norm = grad_clip_norm)."""
  cfg = config_lib.base_config().optim
  params = {"w": jnp.ones((4, 4))}
  big = {"w": jnp.full((4, 4), 100.0)}
  plain = optim.make(cfg, optim.lr_schedule(cfg, peak_lr=1.0, total_steps=10, warmup_steps=0), total_steps=10)
  cfg.grad_clip_norm = 1e-3
  clipping = optim.make(cfg, optim.lr_schedule(cfg, peak_lr=1.0, total_steps=10, warmup_steps=0), total_steps=10)
  _, state = clipping.update(big, clipping.init(params), params)
  _, ref = plain.update(big, plain.init(params), params)
  mu = lambda s: jax.tree.leaves([x for x in jax.tree.leaves(s, is_leaf=lambda n: isinstance(
      n, optax.ScaleByAdamState)) if isinstance(x, optax.ScaleByAdamState)][0].mu)[0]
  np.testing.assert_allclose(mu(ref), 0.1 * 100.0)             # (1 − b1)·g
  np.testing.assert_allclose(mu(state), 0.1 * 1e-3 / 4, rtol=1e-5)  # g clipped to norm 1e-3 (16 entries)


def test_vitb16_in1k_is_the_official_recipe():
  cfg = config_lib.resolve(lmim_vitb16_in1k.get_config(), num_train_examples=1_281_167)
  assert encoder_dims(cfg.model) == dict(width=768, depth=12, num_heads=12, patch_size=16)
  assert cfg.steps_per_epoch == 312 and cfg.total_steps == 800 * 312 and cfg.warmup_steps == 40 * 312
  assert cfg.optim.lr == pytest.approx(2.4e-3) and cfg.optim.min_lr_frac == 0.25
  assert (cfg.optim.b1, cfg.optim.b2, cfg.optim.weight_decay) == (0.9, 0.95, 0.05)
  assert (cfg.views.patch_gap, cfg.views.num_vis, cfg.views.mask_target) == (4, 20, True)
  assert (cfg.model.decoder.width, cfg.model.decoder.depth, cfg.model.decoder.num_heads) == (512, 3, 16)
  assert (cfg.model.projector.dim, cfg.model.projector.depth) == (4096, 3)
  assert (cfg.loss.tau, cfg.sim_reg.coeff, cfg.sim_reg.start, cfg.sim_reg.end) == (0.2, 0.1, 0.75, 0.25)
  method = methods.build(cfg, 3)
  assert (method.train_image_size, method.eval_image_size, method.num_targets) == (280, 224, 176)
  params, ema = jax.eval_shape(method.init, jax.random.key(0))
  count = lambda t: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(t))
  # Spec §8: online encoder 108.73M (projector 23.09M included), decoder 13.40M.
  assert count(params["encoder"]) == pytest.approx(108.73e6, rel=1e-3)
  assert count(params["decoder"]) == pytest.approx(13.40e6, rel=1e-3)
  assert count(ema) == count(params["encoder"])


def test_runlocal_variant_builds_on_the_embedded_data():
  setup = train.prepare(lmim_vitb16_in1k.get_config("runlocal"))
  assert setup.info.name == "mnist5k" and setup.config.total_steps == 10


@pytest.mark.slow
def test_learnable_position_table_and_bfloat16_matmuls():
  cfg = tiny_config(**{"model.freeze_pe": False, "model.dtype": "bfloat16"})
  cfg = config_lib.resolve(cfg, 4000)
  method = methods.build(cfg, 1)
  params, ema = method.init(jax.random.key(0))
  assert params["encoder"]["pos_embed"].shape == (17, 32) and not optim.decay_mask(params)["encoder"]["pos_embed"]
  images = jax.random.normal(jax.random.key(1), (8, 20, 20, 1))
  keys = jax.random.split(jax.random.key(2), 8)
  loss_bf16, _ = method.loss(params, ema, {"image": images}, keys, 0)
  cfg.model.dtype = "float32"
  loss_f32, _ = methods.build(cfg, 1).loss(params, ema, {"image": images}, keys, 0)
  assert jnp.isfinite(loss_bf16) and abs(float(loss_bf16) - float(loss_f32)) < 0.05


def test_sim_via_mean_direction_equals_the_gram_mean():
  z = jax.random.normal(jax.random.key(0), (3, 7, 5))
  zn = z / jnp.linalg.norm(z, axis=-1, keepdims=True)
  gram = jnp.einsum("bid,bjd->bij", zn, zn).mean()
  np.testing.assert_allclose(losses.pairwise_sim(z), gram, rtol=1e-6)
  # Grouping: two groups of 3 examples differ from one group of 6 when their means differ.
  z6 = jnp.concatenate([z, -z])
  one = losses.sim_regularizer(z6, 0.5, 6)
  two = losses.sim_regularizer(z6, 0.5, 3)
  np.testing.assert_allclose(one, two, rtol=1e-6)  # equal per-image Sims: grouping cannot matter
  w = jnp.concatenate([z, jnp.ones_like(z)])
  assert not np.isclose(losses.sim_regularizer(w, 0.5, 6), losses.sim_regularizer(w, 0.5, 3))


def test_collapse_warning_fires_above_the_threshold():
  method = methods.build(config_lib.resolve(tiny_config(), 4000), 1)
  assert method.health_warnings({"sim_trg": 0.5}, 10) == []
  [msg] = method.health_warnings({"sim_trg": 0.97}, 10)
  assert "0.970 > 0.95 at step 10" in msg and "collapsing" in msg
