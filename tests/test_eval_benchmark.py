"""lmim.eval_benchmark: the reference is the official NN loop on the same weights (same features,
same accuracy), lmim's side is its evaluators' extraction, and bad input is one line."""
import jax
import numpy as np
import pytest

from lmim import cli, config_lib, methods
from lmim import eval_benchmark as eb
from lmim.errors import ConfigError
from lmim.evaluators import features as feats_lib


def tiny():
  cfg, _ = cli.load_config("configs/lmim_vitb16_in1k.py:runlocal")   # Ti/4, 2 blocks, 28 px
  return cfg


def test_lmim_side_is_the_evaluators_extraction_in_example_order():
  """Batches of 3 over 8 images (a short last batch, one batch in flight while the next is read)
  give, row for row, what one call of the NN feature on all 8 images gives."""
  cfg = config_lib.resolve(tiny(), 1_281_167)
  method = methods.build(cfg, 3, validated=False)
  params = method.init(jax.random.key(0))[0]["encoder"]
  imgs, labels = eb.make_images(8, method.eval_image_size)
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]).reshape(1, 1), ("data", "fsdp"))
  f, top1, _, _ = eb.lmim_nn_eval(method, params, mesh, imgs, labels, batch=3)
  want = np.asarray(jax.jit(feats_lib.feature_fn(method.encoder_view, eb.NN_FEATURE))(params, imgs))
  np.testing.assert_allclose(f, want, rtol=1e-5, atol=1e-6)
  normed = want / np.linalg.norm(want, axis=1, keepdims=True)
  sims = normed @ normed.T
  np.fill_diagonal(sims, -np.inf)
  assert top1 == pytest.approx(100 * np.mean(labels[sims.argmax(1)] == labels))


def test_reference_is_the_official_forward_on_the_same_weights():
  """The torch loop computes the same features (to float32 round-off) and the same NN top-1."""
  pytest.importorskip("torch")
  r = eb.run(tiny(), images=16, batch=8, reps=1, peak=False)
  assert r["max_feature_diff"] < 1e-5, r["max_feature_diff"]
  assert r["reference"]["nn_top1"] == r["lmim"]["nn_top1"]
  report = eb.format_report(r)
  assert "lmim / reference" in report and "same NN top-1: yes" in report


def test_bad_input_is_one_line_before_anything_runs():
  with pytest.raises(ConfigError, match="--images=1 is invalid"):
    eb.run(tiny(), images=1, peak=False)   # FlagError: "--images=1 is invalid"
  with pytest.raises(ConfigError, match="batch"):
    eb.run(tiny(), images=8, batch=0, peak=False)
  mae, _ = cli.load_config("configs/mae_vitb16_in1k.py:runlocal")
  with pytest.raises(ConfigError, match="method.*latent_mim"):
    eb.run(mae, images=8, peak=False)
