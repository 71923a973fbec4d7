"""One trainer step and the tolerances to compare steps across meshes (shared by test files)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np

from lmim import train, views


def first_batch(setup):
  return next(train.train_batches(setup, 0, _host(setup)))


def _host(setup):
  m = setup.method
  return m.host_state_init(setup.info.num_examples)


def one_step(config, devices):
  setup = train.prepare(config, devices)
  state = setup.init_fn(setup.init_key)
  local = first_batch(setup)
  grads = reference_grads(setup, state, local)
  state, metrics = setup.step_fn(state, train.device_batch(setup, local), setup.step_key)
  return dict(params=jax.device_get(state.params), ema=jax.device_get(state.ema_params),
              metrics=jax.device_get(metrics), grads=grads, lr=setup.config.optim.lr)


def reference_grads(setup, state, local):
  """Step-0 gradients on one device, computed outside the trainer (for tolerances only)."""
  m = setup.method
  batch = {k: jnp.asarray(local[k].reshape(-1, *local[k].shape[2:])) for k in setup.batch_shardings}
  n = batch["image"].shape[0]
  keys = views.example_keys(jax.random.fold_in(jax.device_get(setup.step_key), 0), jnp.arange(n))
  params = jax.device_get(state.params)
  ema = jax.device_get(state.ema_params)
  ema = None if ema is None else m.update_targets(ema, params, 0)
  loss = lambda p: m.loss(p, ema, batch, keys, 0)[0]
  return jax.device_get(jax.jit(jax.grad(loss))(params))


def assert_params_close(a, ref, atol):
  """Elementwise |a − ref| ≤ atol, except where the true gradient is zero and float32 round-off
  decides Adam's first step (key biases; the decoder's last bias under PatchDisc): there the step
  is ±lr whatever the device count (see the fixture README), so allow 2·lr."""
  g_scale = max(np.abs(g).max() for g in jax.tree.leaves(ref["grads"]))
  flat = jax.tree_util.tree_flatten_with_path(ref["params"])[0]
  for (path, want), got, g in zip(flat, jax.tree.leaves(a["params"]), jax.tree.leaves(ref["grads"])):
    tol = np.where(np.abs(g) < 1e-4 * g_scale, 2 * ref["lr"], atol)
    excess = np.abs(got - want) - tol
    assert excess.max() <= 0, f"{jax.tree_util.keystr(path)}: off by {np.abs(got - want).max():.3g}"


def assert_trees_close(a, b, atol):
  """Same structure, every leaf within atol (chex names the first leaf that is not, by its path)."""
  chex.assert_trees_all_close(a, b, rtol=0, atol=atol)
