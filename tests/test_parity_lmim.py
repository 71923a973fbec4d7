"""Parity with the official Latent MIM code on its golden fixtures (the parity checkpoints 1–10 of
docs/latent_mim.md §14).

Every folder under ../shared/fixtures/official_lmim/ (and every `official_lmim` folder listed in
LMIM_PARITY_FIXTURES) is loaded through lmim's own converter and run through the same functions
the trainer uses: the forward, the loss, jax.grad, lmim.optim's AdamW and the EMA update.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures_lib import assert_close, fixture_dirs, load
from lmim import convert, losses, optim
from lmim.evaluators import features
from lmim.methods.common import ema_update

DIRS = fixture_dirs("official_lmim")
ACTIVATIONS = ("patch_pix", "target_out", "x_trg", "x_vis", "decoder_queries_in", "x_pred",
               "loss_main", "loss_total", "sim_pred", "sim_vis", "sim_trg", "nn_features")


@pytest.fixture(scope="module", params=DIRS, ids=[d.name for d in DIRS])
def run(request):
  hp, sd, inputs, expected = load(request.param)
  cfg, method, abstract = convert.target_trees(convert.config_from_official(hp))
  trees = convert.convert(sd, abstract, convert.frozen_pos_tables(cfg))
  params, ema = trees["params"], trees["ema_params"]

  images = jnp.asarray(inputs["images"].transpose(0, 2, 3, 1))  # fixtures are NCHW
  n, g = images.shape[0], hp["grid_size"]
  if "offset_y" in inputs:
    offsets = np.stack([inputs["offset_y"], inputs["offset_x"]], -1)
  else:
    offsets = np.zeros((n, g, g, 2))
  offsets, shuffle = jnp.asarray(offsets, jnp.int32), jnp.asarray(inputs["shuffle"], jnp.int32)

  def total_loss(p):
    out = method.forward(p, ema, images, shuffle, offsets, hp["sim_trg"])
    return out["loss_total"], out

  (_, out), grads = jax.jit(jax.value_and_grad(total_loss, has_aux=True))(params)
  out = dict(out, sim_pred=losses.pairwise_sim(out["x_pred"]),
             sim_vis=losses.pairwise_sim(out["x_vis"][:, 1:]), sim_trg=losses.pairwise_sim(out["x_trg"]))
  # One AdamW step at the fixture's constant lr: lmim.optim with warmup 0 and min_lr_frac 1.
  cfg.optim.weight_decay, cfg.optim.min_lr_frac = hp["weight_decay"], 1.0
  tx = optim.make(cfg.optim, optim.lr_schedule(cfg.optim, peak_lr=hp["lr"], total_steps=1, warmup_steps=0), total_steps=1)
  updates, _ = tx.update(grads, tx.init(params), params)
  new_params = jax.tree.map(lambda p, u: p + u, params, updates)
  new_ema = ema_update(ema, new_params["encoder"], hp["momentum"])
  # The fixture's NN features are those of the online encoder after the AdamW step. They are
  # computed from the fixture's own post-step weights: elements whose gradient is round-off may
  # legitimately step by ±lr (see test_adamw_step), which must not blur a forward-pass check.
  stepped = dict(sd, **{k[len("after_adamw/"):]: v for k, v in expected.items() if k.startswith("after_adamw/")})
  stepped_enc = convert.convert(stepped, abstract, convert.frozen_pos_tables(cfg))["params"]["encoder"]
  eval_images = jnp.asarray(inputs["eval_images"].transpose(0, 2, 3, 1))
  out["nn_features"] = features.select(method.encode(stepped_enc, eval_images), "pooled_pre_norm")
  return dict(hp=hp, expected=expected, out=out, params=params,
              grads=convert.to_official({"params": grads}),
              after_adamw=convert.to_official({"params": new_params}),
              after_ema=convert.to_official({"ema_params": new_ema}))


@pytest.mark.slow
def test_indices(run):
  exp, out = run["expected"], run["out"]
  for name in ("vis_idx", "mask_idx", "trg_idx"):
    np.testing.assert_array_equal(np.asarray(out[name]), exp[name], err_msg=name)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_activations(run, name):
  exp = run["expected"]
  if name not in exp:
    pytest.skip(f"{name} not in this fixture")
  b = exp[name]
  assert_close(run["out"][name], b, rtol=1e-5, atol=1e-5 * np.abs(b).max(), name=name)


def grad_scale(exp):
  return max(np.abs(v).max() for k, v in exp.items() if k.startswith("grad/"))


def test_gradients_cover_every_trainable_parameter(run):
  want = {k[len("grad/"):] for k in run["expected"] if k.startswith("grad/")}
  assert set(run["grads"]) == want


def test_gradients(run):
  exp, g_scale = run["expected"], grad_scale(run["expected"])
  for name, a in run["grads"].items():
    assert_close(a, exp[f"grad/{name}"], rtol=1e-4, atol=1e-4 * g_scale, name=f"grad/{name}")


def test_weight_decay_rule_matches_official(run):
  mask = convert.to_official({"params": optim.decay_mask(run["params"])})
  assert {k for k, v in mask.items() if bool(v)} == set(run["hp"]["decay_params"])


def test_adamw_step(run):
  exp, lr = run["expected"], run["hp"]["lr"]
  g_scale = grad_scale(exp)
  for name, a in run["after_adamw"].items():
    # Elements whose true gradient is round-off may step by up to ±lr (fixture README).
    tiny = np.abs(exp[f"grad/{name}"]) < 1e-4 * g_scale
    atol = np.where(tiny, 2 * lr, 1e-2 * lr)
    assert_close(a, exp[f"after_adamw/{name}"], rtol=1e-5, atol=atol, name=f"after_adamw/{name}")


def test_ema_step(run):
  exp, hp = run["expected"], run["hp"]
  keys = {k for k in exp if k.startswith("after_ema/")}
  assert {f"after_ema/{k}" for k in run["after_ema"]} == keys
  atol = 2 * hp["lr"] * (1 - hp["momentum"]) + 1e-6
  for name, a in run["after_ema"].items():
    assert_close(a, exp[f"after_ema/{name}"], rtol=1e-5, atol=atol, name=f"after_ema/{name}")
