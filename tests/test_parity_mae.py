"""Parity with the official MAE code on its golden fixtures (../shared/fixtures/official_mae/ and
every `official_mae` folder listed in LMIM_PARITY_FIXTURES).

Expected gradients and post-step parameters are brought into lmim's tree with the same strict
converter that imports official MAE checkpoints, so the comparison is leaf by leaf in lmim names.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures_lib import assert_close, fixture_dirs, load
from lmim import convert, optim
from lmim.methods import mae

DIRS = fixture_dirs("official_mae")


def as_tree(prefix, expected, abstract):
  """{prefix + official name: array} -> lmim params tree (strict: every parameter present)."""
  sd = {k[len(prefix):]: v for k, v in expected.items() if k.startswith(prefix)}
  return convert.convert(sd, {"params": abstract["params"]}, None, source="official_mae")["params"]


@pytest.fixture(scope="module", params=DIRS, ids=[d.name for d in DIRS])
def run(request):
  hp, sd, inputs, expected = load(request.param)
  cfg, method, abstract = convert.target_trees(convert.config_from_official(hp))
  params = convert.convert(sd, abstract, convert.frozen_pos_tables(cfg), source="official_mae")["params"]
  images = jnp.asarray(inputs["images"].transpose(0, 2, 3, 1))
  shuffle = jnp.argsort(jnp.asarray(inputs["noise"]), axis=1)

  def loss_fn(p):
    out = method.forward(p, images, shuffle)
    return out["loss"], out

  (_, out), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  cfg.optim.weight_decay, cfg.optim.min_lr_frac = hp["weight_decay"], 1.0
  tx = optim.make(cfg.optim, optim.lr_schedule(cfg.optim, peak_lr=hp["lr"], total_steps=1, warmup_steps=0), total_steps=1, decay_rule=mae.mae_decay)
  updates, _ = tx.update(grads, tx.init(params), params)
  return dict(hp=hp, sd=sd, expected=expected, out=out, params=params, grads=grads, abstract=abstract,
              stepped=jax.tree.map(lambda p, u: p + u, params, updates))


@pytest.mark.slow
def test_mask_and_restore_indices(run):
  np.testing.assert_array_equal(np.asarray(run["out"]["ids_restore"]), run["expected"]["ids_restore"])
  np.testing.assert_array_equal(np.asarray(run["out"]["mask"]), run["expected"]["mask"])
  assert int(run["expected"]["mask"].sum(1)[0]) == run["hp"]["num_patches"] - run["hp"]["len_keep"]


@pytest.mark.parametrize("name", ["latent", "pred", "target_patches", "loss"])
def test_activations(run, name):
  b = run["expected"][name]
  assert_close(run["out"][name], b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), name=name)


def grad_scale(exp):
  return max(np.abs(v).max() for k, v in exp.items() if k.startswith("grad/"))


def test_gradients(run):
  exp = run["expected"]
  want = as_tree("grad/", exp, run["abstract"])
  g_scale = grad_scale(exp)
  for (path, a), b in zip(jax.tree_util.tree_flatten_with_path(run["grads"])[0], jax.tree.leaves(want)):
    assert_close(a, b, rtol=1e-4, atol=1e-4 * g_scale, name=f"grad{jax.tree_util.keystr(path)}")


def test_weight_decay_rule_is_maes(run):
  hp, exp = run["hp"], run["expected"]
  flags = {k[len("grad/"):]: np.full(v.shape, float(k[len("grad/"):] in hp["decay_params"]), np.float32)
           for k, v in exp.items() if k.startswith("grad/")}
  want = convert.convert(flags, {"params": run["abstract"]["params"]}, None, source="official_mae")["params"]
  got = optim.decay_mask(run["params"], mae.mae_decay)
  for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)):
    assert bool(g) == bool(w.all()) and (w.all() or not w.any()), jax.tree_util.keystr(path)
  assert "cls_token" in hp["decay_params"] and "mask_token" in hp["decay_params"]  # unlike Latent MIM


def test_adamw_step(run):
  exp, lr = run["expected"], run["hp"]["lr"]
  want = as_tree("after_adamw/", exp, run["abstract"])
  grads = as_tree("grad/", exp, run["abstract"])
  g_scale = grad_scale(exp)
  flat = jax.tree_util.tree_flatten_with_path(run["stepped"])[0]
  for (path, a), b, g in zip(flat, jax.tree.leaves(want), jax.tree.leaves(grads)):
    atol = np.where(np.abs(g) < 1e-4 * g_scale, 2 * lr, 1e-2 * lr)
    assert_close(a, b, rtol=1e-5, atol=atol, name=f"after_adamw{jax.tree_util.keystr(path)}")


def test_converter_consumes_every_official_key(run):
  """The same strict import that reads published MAE checkpoints (encoder and decoder)."""
  assert set(run["sd"]) >= {"patch_embed.proj.weight", "decoder_pred.weight", "pos_embed", "decoder_pos_embed"}
  with pytest.raises(Exception, match="not consumed"):
    convert.convert(dict(run["sd"], extra_head=np.zeros(3)), run["abstract"], None, source="official_mae")
