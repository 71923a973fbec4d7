"""Trading compute for memory without changing numerics: rematerialisation policies and the
scan over encoder layers give the loss and gradients of the plain model."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmim import config_lib, methods, optim, views
from lmim.errors import ConfigError
from lmim.evaluators import finetune
from lmim.models.vit import stack_layers, unstack_layers
from tiny import tiny_config


def build(method="latent_mim", **overrides):
  cfg = config_lib.resolve(tiny_config(method, **{"model.depth": 3, **overrides}), 4000)
  return methods.build(cfg, 1)


def loss_and_grads(method, params, ema):
  images = jax.random.uniform(jax.random.key(1), (16, method.train_image_size, method.train_image_size, 1))
  batch = {"image": images}
  keys = views.example_keys(jax.random.key(2), jnp.arange(16))
  (loss, _), grads = jax.jit(jax.value_and_grad(method.loss, has_aux=True))(params, ema, batch, keys, 0)
  return loss, grads


def with_stacked_encoder(tree):
  return {**tree, "encoder": stack_layers(tree["encoder"])} if tree is not None and "encoder" in tree else tree


@pytest.fixture(scope="module")
def plain():
  method = build()
  params, ema = method.init(jax.random.key(0))
  return method, params, ema, loss_and_grads(method, params, ema)


@pytest.mark.parametrize("policy", ["full", "dots"])
@pytest.mark.slow
def test_remat_policies_keep_loss_and_gradients(plain, policy):
  _, params, ema, (loss, grads) = plain
  method = build(**{"model.remat": policy})
  loss_r, grads_r = loss_and_grads(method, params, ema)
  np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_r, grads)


@pytest.mark.parametrize("policy", ["none", "full"])
@pytest.mark.slow
def test_scan_over_layers_keeps_loss_and_gradients(plain, policy):
  _, params, ema, (loss, grads) = plain
  method = build(**{"model.scan_layers": True, "model.remat": policy})
  stacked = with_stacked_encoder(params)
  ema_stacked = stack_layers(ema) if ema is not None and "blocks_0" in ema else with_stacked_encoder(ema)
  # The stacked layout is the same model: init draws the same shapes.
  shapes = jax.eval_shape(method.init, jax.random.key(0))[0]
  assert jax.tree.map(lambda x: x.shape, shapes) == jax.tree.map(lambda x: x.shape, stacked)
  loss_s, grads_s = loss_and_grads(method, stacked, ema_stacked)
  np.testing.assert_allclose(loss_s, loss, rtol=1e-6)
  grads_s = {**grads_s, "encoder": unstack_layers(grads_s["encoder"])}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_s, grads)


def test_scanned_weights_decay_like_the_loop(plain):
  _, params, _, _ = plain
  mask = optim.decay_mask(params)
  mask_s = optim.decay_mask(with_stacked_encoder(params))
  assert mask_s["encoder"]["blocks"]["block"] == mask["encoder"]["blocks_0"]
  assert {k: v for k, v in mask_s["encoder"].items() if k != "blocks"} == {
      k: v for k, v in mask["encoder"].items() if not k.startswith("blocks_")}
  depth = 3
  scales = finetune.lr_scales(with_stacked_encoder(params), depth, 0.5)
  plain_scales = finetune.lr_scales(params, depth, 0.5)
  qkv = np.asarray(scales["encoder"]["blocks"]["block"]["attn"]["qkv"]["kernel"]).ravel()
  np.testing.assert_allclose(qkv, [plain_scales["encoder"][f"blocks_{i}"]["attn"]["qkv"]["kernel"]
                                   for i in range(depth)])


def test_bad_switches_are_one_line_errors():
  with pytest.raises(ConfigError, match=r"config.model.remat='some' is invalid: one of"):
    config_lib.validate_run(tiny_config("latent_mim", **{"model.remat": "some"}), 1)
  with pytest.raises(ConfigError, match=r"config.model.scan_layers=True is invalid: False for PCAE"):
    methods.get("pcae").validate(tiny_config("pcae", **{"model.scan_layers": True}))
