"""Every shipped config: the full recipe validates and resolves (ImageNet-sized, shapes only), and
its `runlocal` variant builds on the embedded data; every ablation row likewise."""
import importlib

import jax
import pytest

from configs import lmim_ablations
from lmim import data, train

CONFIGS = ["lmim_vitb16_in1k", "mae_vitb16_in1k", "pcae_vitb16_in1k", "data2vec_vitb16_in1k",
           "ijepa_in1k", "cmae_in1k"]
IMAGENET = data.DataInfo(name="imagenet2012", num_examples=1_281_167, num_classes=1000, channels=3,
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def full_recipe(config):
  """Build everything but data and compilation for the real recipe on a 1-device mesh."""
  config.mesh.update(dict(data=1, fsdp=1))
  setup = train.build(config, IMAGENET, jax.devices()[:1])
  jax.eval_shape(setup.init_fn, setup.init_key)   # shapes of the whole train state, nothing allocated
  return setup


@pytest.mark.parametrize("name", CONFIGS)
def test_recipe_and_runlocal(name):
  mod = importlib.import_module(f"configs.{name}")
  setup = full_recipe(mod.get_config())
  assert setup.config.total_steps > 1000 and setup.config.batch_size >= 1024
  local = train.prepare(mod.get_config("runlocal"), jax.devices()[:1])
  assert local.info.name == "mnist5k" and local.config.total_steps == 10


@pytest.mark.parametrize("row", sorted(lmim_ablations.ROWS))
def test_every_ablation_row_builds(row):
  full = full_recipe(lmim_ablations.get_config(f"row={row}"))
  assert full.config.total_steps == 300 * 312
  local = train.prepare(lmim_ablations.get_config(f"row={row},runlocal"), jax.devices()[:1])
  assert local.method.target_mode == full.method.target_mode and local.method.loss_name == full.method.loss_name


def test_ablation_rows_follow_the_paper_ladder():
  rows = {r: lmim_ablations.get_config(f"row={r}") for r in ("naive", "momentum", "mask90_gap4_sim", "dec_cues_mlp")}
  assert rows["naive"].targets.mode == "joint" and rows["momentum"].targets.mode == "ema"
  assert rows["naive"].loss.name == "mse" and rows["naive"].views.num_vis == 49
  assert rows["mask90_gap4_sim"].model.decoder.type == "self" and rows["mask90_gap4_sim"].sim_reg.coeff == 0.1
  final = rows["dec_cues_mlp"]
  assert (final.model.decoder.type, final.model.decoder.visual_cues, final.model.projector.depth) == ("cross", True, 3)
  with pytest.raises(Exception, match="row"):
    lmim_ablations.get_config("row=nonsense")
