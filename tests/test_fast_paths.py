"""The faster paths give the reference path's numbers: cotangent barriers (a fusion boundary for
XLA:CPU), bfloat16 matmuls, and fused attention (jax.nn.dot_product_attention)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmim import config_lib, methods, views
from tiny import tiny_config


def loss_and_grads(method_name, **overrides):
  cfg = config_lib.resolve(tiny_config(method_name, **overrides), 4000)
  m = methods.build(cfg, 3)
  params, ema = m.init(jax.random.key(0))
  size = m.train_image_size
  batch = {"image": jax.random.normal(jax.random.key(1), (cfg.batch_size, size, size, 3))}
  keys = views.example_keys(jax.random.key(2), jnp.arange(cfg.batch_size))
  fn = jax.jit(jax.value_and_grad(lambda p: m.loss(p, ema, batch, keys, 0)[0]))
  (loss, grads), hlo = fn(params), fn.lower(params).compile().as_text()
  return float(loss), jax.device_get(grads), hlo


@pytest.mark.parametrize("method", ["latent_mim", "mae"])
def test_cotangent_barriers_change_no_number(method):
  """Barriers on or off: the same loss and gradients (a fusion boundary, not arithmetic), and
  the boundary survives compilation (one conditional per barrier: XLA folds a conditional whose
  branches are the same computation, and expands an optimization_barrier away)."""
  loss_on, grads_on, hlo_on = loss_and_grads(method, **{"model.cotangent_barriers": "on"})
  loss_off, grads_off, hlo_off = loss_and_grads(method, **{"model.cotangent_barriers": "off"})
  assert loss_on == loss_off
  scale = max(float(np.abs(g).max()) for g in jax.tree.leaves(grads_off))
  for a, b in zip(jax.tree.leaves(grads_on), jax.tree.leaves(grads_off)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6 * scale)
  assert " conditional(" not in hlo_off
  # Encoder blocks: 2 per block; cross-decoder blocks: 3 (tiny: depth 1 each, online encoder and decoder).
  assert hlo_on.count(" conditional(") >= (5 if method == "latent_mim" else 4)


def test_barrier_mode_is_validated_and_auto_follows_the_backend():
  from lmim.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from lmim.models import cotangent_barriers  # pylint: disable=import-outside-toplevel
  c = tiny_config()
  assert cotangent_barriers(c.model) == (jax.default_backend() == "cpu")   # 'auto'
  c.model.cotangent_barriers = "sometimes"
  with pytest.raises(ConfigError, match="model.cotangent_barriers"):
    cotangent_barriers(c.model)
