"""The `pictures` and `collapse` evaluators: their numerics on synthetic features whose answer is
known, and both evaluators end to end on a tiny Latent MIM model and the embedded data."""
import glob
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import lmim.evaluators
import lmim.metrics_writer
import lmim.sharding
from lmim import config_lib, losses, methods
from lmim.errors import ConfigError
from lmim.evaluators import collapse, pictures
from tiny import tiny_config

DATA = dict(data="mnist5k", split="test")


def build(method_name="latent_mim", **overrides):
  cfg = config_lib.resolve(tiny_config(method_name, **overrides), 4000)
  method = methods.build(cfg, 1)
  params, ema = method.init(jax.random.key(0))
  return method, types.SimpleNamespace(params=params, ema_params=ema)


@pytest.fixture(scope="module")
def tiny():
  return build()


def mesh_of(devices):
  return lmim.sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)), devices)


def context(method, name, workdir=None, writer=None, devices=None, step=0):
  return lmim.evaluators.context(method, mesh_of(devices or jax.devices()[:1]), name,
                                 workdir=workdir, writer=writer, step=step)


def metrics_of(evaluator, state) -> dict:
  out = dict(evaluator.run(state))
  assert all(np.isfinite(v) for v in out.values()), out
  return out


# Collapse numerics ---------------------------------------------------------------------------------

def test_sim_and_rank_of_identical_features_say_collapse():
  v = np.random.default_rng(0).normal(size=64)
  sim, off = collapse.sim_per_image(np.broadcast_to(v, (3, 16, 64)))
  np.testing.assert_allclose(sim, 1.0, atol=1e-5)
  np.testing.assert_allclose(off, 1.0, atol=1e-5)
  same = np.broadcast_to(v, (50, 64))
  assert collapse.effective_rank(same) == pytest.approx(1.0, abs=1e-3)
  assert collapse.feature_std(same) == pytest.approx(0.0, abs=1e-6)


def test_sim_and_rank_of_random_features_say_healthy():
  rng = np.random.default_rng(1)
  tokens = rng.normal(size=(32, 16, 512))
  sim, off = collapse.sim_per_image(tokens)
  # Diagonal included: 1/L from the self-pairs, ~0 from the rest.
  assert float(np.mean(sim)) == pytest.approx(1 / 16, abs=0.01)
  assert abs(float(np.mean(off))) < 0.01
  np.testing.assert_allclose(sim, 1 / 16 + 15 / 16 * np.asarray(off), rtol=1e-5)
  # The official definition (losses.pairwise_sim_per_image) is the diagonal-inclusive value.
  np.testing.assert_allclose(sim, losses.pairwise_sim_per_image(jnp.asarray(tokens)), rtol=1e-5)
  features = rng.normal(size=(64, 512))
  assert collapse.effective_rank(features) > 0.8 * 64
  assert collapse.feature_std(features) == pytest.approx(1 / np.sqrt(512), rel=0.1)


def test_effective_rank_is_the_entropy_of_the_singular_values():
  rng = np.random.default_rng(2)
  u = np.linalg.qr(rng.normal(size=(100, 4)))[0]
  v = np.linalg.qr(rng.normal(size=(64, 4)))[0]
  sigma = np.array([4.0, 3.0, 2.0, 1.0])
  p = sigma / sigma.sum()
  expected = np.exp(-np.sum(p * np.log(p)))                      # ≈ 3.60 of 4 directions
  assert collapse.effective_rank(u @ np.diag(sigma) @ v.T) == pytest.approx(expected, rel=1e-6)


# Picture numerics ----------------------------------------------------------------------------------

def test_pca_map_gives_three_directions_distinct_colours():
  rng = np.random.default_rng(3)
  # A background and three parts along orthogonal directions: the centred cloud spans 3 dims.
  centres = np.zeros((4, 24))
  centres[1:, :3] = 4.0 * np.eye(3)
  centres[:, 3] = 10.0                                         # an offset shared by every token
  groups = rng.integers(0, 4, size=(2, 40))
  groups[:, :4] = np.arange(4)                                 # every group in every image
  features = centres[groups] + 0.02 * rng.normal(size=(2, 40, 24))
  rgb, explained = pictures.pca_rgb(features)
  assert rgb.shape == (2, 40, 3) and rgb.min() >= 0 and rgb.max() <= 1
  # Explained variance is that of a PCA: the top 3 eigenvalues of the covariance over its trace.
  eig = np.linalg.eigvalsh(np.cov(features.reshape(-1, 24), rowvar=False))
  assert explained == pytest.approx(100 * eig[-3:].sum() / eig.sum(), rel=1e-6)
  assert explained > 99
  colours = np.stack([rgb[groups == g].mean(axis=0) for g in range(4)])
  spread = max(rgb[groups == g].std(axis=0).max() for g in range(4))
  gaps = [np.linalg.norm(colours[a] - colours[b]) for a in range(4) for b in range(a + 1, 4)]
  assert spread < 0.05, spread
  assert min(gaps) > 0.4, gaps


def test_ward_clustering_recovers_two_regions():
  rng = np.random.default_rng(4)
  region = np.zeros((4, 4), int)
  region[:, 2:] = 1
  region[0, 1] = 1                                             # region 1 has 9 patches, region 0 7
  a, b = rng.normal(size=(2, 32))
  features = np.where(region.reshape(-1, 1) == 1, a, b) + 0.3 * rng.normal(size=(16, 32))
  segments = pictures.cluster_patches(features, 2)
  # Segment ids are ordered by size: the larger region is segment 0.
  np.testing.assert_array_equal(segments, 1 - region.reshape(-1))
  assert pictures.size_entropy(segments, 2) == pytest.approx(0.989, abs=1e-3)
  assert pictures.size_entropy(np.zeros(16, int), 4) == 0


def test_retrieval_skips_the_query_itself():
  bank = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
  idx, cos = pictures.cosine_neighbours(bank[[0, 2]], bank, 2, exclude=np.array([0, -1]))
  np.testing.assert_array_equal(idx, [[1, 3], [2, 3]])
  assert cos[1, 0] == pytest.approx(1.0)


# End to end ------------------------------------------------------------------------------------------

def test_pictures_are_written_as_pngs_and_tensorboard_images(tiny, tmp_path):
  method, state = tiny
  writer = lmim.metrics_writer.MetricWriter(str(tmp_path))
  ctx = context(method, "pictures", str(tmp_path), writer, step=3)
  ev = pictures.Evaluator(ctx, **DATA, num_images=8, num_neighbours=5, bank_size=128, batch_size=64)
  out = metrics_of(ev, state)
  writer.close()
  assert out["files_written"] == 3 and out["images_logged"] == 3
  # 16-px eval images magnified 4x to 64-px tiles, 2 px apart: 8 columns, 2 rows (inputs, maps);
  # retrieval: 8 rows of query + 5 neighbours.
  sizes = {"pca": (530, 134), "clusters": (530, 134), "retrieval": (398, 530)}
  for kind, size in sizes.items():
    path = tmp_path / "pictures" / f"pictures_{kind}_step3.png"
    assert path.stat().st_size > 0
    with Image.open(path) as im:
      assert im.format == "PNG" and im.size == size and im.mode == "RGB"
      pixels = np.asarray(im)
    assert pixels.std() > 10, kind                              # not a blank canvas
  events = glob.glob(os.path.join(tmp_path, "tensorboard", "events.out.tfevents.*"))
  assert events and os.path.getsize(events[0]) > 10_000          # three images, not just a header


def test_pictures_without_workdir_or_writer_write_nothing(tiny):
  method, state = tiny
  ev = pictures.Evaluator(context(method, "pictures"), **DATA, num_images=2, num_neighbours=2,
                          bank_size=16, batch_size=16)
  out = metrics_of(ev, state)
  assert out["files_written"] == 0 and out["images_logged"] == 0


def test_collapse_metrics_on_a_tiny_model(tiny):
  method, state = tiny
  ev = collapse.Evaluator(context(method, "collapse"), **DATA, batch_size=32, max_images=64)
  out = metrics_of(ev, state)
  sims = ("sim_online", "sim_online_offdiag", "sim_online_ln", "sim_online_ln_offdiag",
          "sim_target", "sim_target_offdiag", "sim_pred", "sim_vis", "sim_trg")
  for name in sims:
    assert -1 <= out[name] <= 1, (name, out[name])
  num_tokens = method.num_patches
  assert out["sim_online"] == pytest.approx(1 / num_tokens + (num_tokens - 1) / num_tokens
                                            * out["sim_online_offdiag"], rel=1e-5)
  # At initialisation the EMA encoder is a copy of the online one.
  assert out["sim_target"] == pytest.approx(out["sim_online"], rel=1e-6)
  assert 1 <= out["effective_rank"] <= 32                       # pooled_pre_norm has width 32
  assert out["feature_std_scaled"] == pytest.approx(out["feature_std"] * np.sqrt(32))
  again = dict(ev.run(state))                                   # views from a fixed key
  assert again["sim_pred"] == out["sim_pred"] and again["sim_vis"] == out["sim_vis"]


def test_collapse_metrics_do_not_depend_on_devices_or_batch_size(tiny):
  """Each image's views come from its own key, so the method's Sims (means over whole batches of
  per-image values) are the same for any batch layout."""
  method, state = tiny
  one = metrics_of(collapse.Evaluator(context(method, "collapse"), **DATA, batch_size=16, max_images=64),
                   state)
  eight = metrics_of(collapse.Evaluator(context(method, "collapse", devices=jax.devices()), **DATA,
                                        batch_size=32, max_images=64), state)
  assert one.keys() == eight.keys()
  for k in one:
    assert eight[k] == pytest.approx(one[k], rel=1e-4, abs=1e-5), k


def with_collapsed_layer_norm(state, *path):
  """A LayerNorm (at `path` in the encoder) with zero scale maps every token to its bias."""
  enc = jax.tree.map(lambda x: x, state.params["encoder"])   # fresh containers, shared arrays
  node = enc
  for key in path[:-1]:
    node = node[key]
  bias = node[path[-1]]["bias"]
  node[path[-1]] = {"scale": jnp.zeros_like(bias), "bias": jnp.linspace(-1, 1, bias.shape[0])}
  return types.SimpleNamespace(params={**state.params, "encoder": enc}, ema_params=None)


def test_collapse_sees_a_collapsed_projector(tiny):
  method, state = tiny
  ev = collapse.Evaluator(context(method, "collapse"), **DATA, batch_size=32, max_images=32)
  out = dict(ev.run(with_collapsed_layer_norm(state, "head", "norm1")))
  assert out["sim_online"] == pytest.approx(1, abs=1e-4)          # the projected tokens
  assert out["sim_online_offdiag"] == pytest.approx(1, abs=1e-4)
  assert out["sim_online_ln"] < 0.9                                # the tokens before the projector


def test_collapse_sees_a_collapsed_encoder(tiny):
  """The final LayerNorm collapsed: post-LN tokens, projected tokens and the pooled post-LN
  feature of every image are one vector."""
  method, state = tiny
  ev = collapse.Evaluator(context(method, "collapse"), **DATA, batch_size=32, max_images=32, feature="pooled")
  out = dict(ev.run(with_collapsed_layer_norm(state, "norm")))
  assert out["sim_online_ln"] == pytest.approx(1, abs=1e-4)
  assert out["sim_online_ln_offdiag"] == pytest.approx(1, abs=1e-4)
  assert out["effective_rank"] == pytest.approx(1, abs=1e-2)
  assert out["feature_std"] == pytest.approx(0, abs=1e-4)
  # No EMA in this state: neither target Sims nor the method's loss (it needs the targets); the
  # method's own `sim_target` (the regulariser's s_t) is never reported as a Sim.
  assert not any(k.endswith("_target") or k.startswith("sim_target") for k in out)
  assert "sim_pred" not in out


def test_collapse_reports_the_encoders_the_state_holds(tiny):
  """`lmim.evaluate` restores only the encoders its evaluators name: an EMA-only state gives the
  target's metrics alone; naming an encoder the state lacks is a one-line error."""
  method, state = tiny
  ema_only = types.SimpleNamespace(params=None, ema_params=state.ema_params)
  ev = collapse.Evaluator(context(method, "collapse"), **DATA, batch_size=16, max_images=16, encoder="ema")
  out = metrics_of(ev, ema_only)
  assert {"sim_target", "effective_rank_target"} <= out.keys()
  assert not {"sim_online", "effective_rank", "sim_pred"} & out.keys()
  no_ema = types.SimpleNamespace(params=state.params, ema_params=None)
  with pytest.raises(ConfigError, match="evals.collapse.encoder"):
    list(ev.run(no_ema))


def test_collapse_skips_sims_a_method_does_not_report():
  method, state = build("mae")
  out = metrics_of(collapse.Evaluator(context(method, "collapse"), **DATA, batch_size=16, max_images=16),
                   state)
  assert "sim_online" in out and "effective_rank" in out
  assert not {"sim_pred", "sim_vis", "sim_trg", "sim_target"} & out.keys()


@pytest.mark.parametrize("module,fields,field", [
    (pictures, dict(feature="pooled_nope"), "feature"),
    (pictures, dict(feature="cls"), "feature"),
    (pictures, dict(encoder="teacher"), "encoder"),
    (pictures, dict(n_clusters=1), "n_clusters"),
    (pictures, dict(bank_size=3, num_neighbours=5), "bank_size"),
    (collapse, dict(feature="pooled_nope"), "feature"),
    (collapse, dict(feature="patch_tokens"), "feature"),
    (collapse, dict(max_images=1), "max_images"),
    (collapse, dict(encoder="teacher"), "encoder"),
])
def test_bad_fields_are_one_line_config_errors(tiny, module, fields, field):
  method, _ = tiny
  with pytest.raises(ConfigError) as err:
    module.Evaluator(context(method, "probe"), **DATA, **fields)
  assert err.value.field == f"evals.probe.{field}"
  assert "\n" not in str(err.value)
