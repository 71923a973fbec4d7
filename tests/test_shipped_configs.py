"""Every shipped config: the full recipe validates and resolves (ImageNet-sized, shapes only), and
its `runlocal` variant builds on the embedded data; every ablation row likewise."""
import importlib

import jax
import pytest

from configs import lmim_ablations
from lmim import cli, data, train

CONFIGS = ["lmim_vitb16_in1k", "mae_vitb16_in1k", "pcae_vitb16_in1k", "data2vec_vitb16_in1k",
           "ijepa_in1k", "cmae_in1k"]
IMAGENET = data.DataInfo(name="imagenet2012", num_examples=1_281_167, num_classes=1000, channels=3,
                         mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# ImageNet-1k's train split restricted to CMC's 100 classes has 126,689 images.
IMAGENET100 = data.DataInfo(name="imagenet2012", num_examples=126_689, num_classes=100, channels=3,
                            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def full_recipe(config, info=IMAGENET):
  """Build everything but data and compilation for the real recipe on a 1-device mesh."""
  config.mesh.update(dict(data=1, fsdp=1))
  setup = train.build(config, info, jax.devices()[:1])
  jax.eval_shape(setup.init_fn, setup.init_key)   # shapes of the whole train state, nothing allocated
  return setup


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.slow
def test_recipe_and_runlocal(name):
  mod = importlib.import_module(f"configs.{name}")
  setup = full_recipe(mod.get_config())
  assert setup.config.total_steps > 1000 and setup.config.batch_size >= 1024
  local = train.prepare(mod.get_config("runlocal"), jax.devices()[:1])
  assert local.info.name == "mnist5k" and local.config.total_steps == 10


@pytest.mark.parametrize("row", sorted(lmim_ablations.ROWS))
@pytest.mark.slow
def test_every_ablation_row_builds(row):
  full = full_recipe(lmim_ablations.get_config(f"row={row}"), IMAGENET100)
  assert full.config.total_steps == 300 * (126_689 // 1024)
  local = train.prepare(lmim_ablations.get_config(f"row={row},runlocal"), jax.devices()[:1])
  assert local.method.target_mode == full.method.target_mode and local.method.loss_name == full.method.loss_name


def test_the_ladder_runs_in_the_recorded_setting_by_default():
  """The official repository's recorded ablation run: ImageNet-100 (CMC's classes, in training and
  in the NN evaluation), batch 1024 with Sim groups of 128, 300 epochs / 30 warmup, blr 1.5e-4 ->
  lr 6e-4, floor 0.25, seed 2, Sim off except in its rows; ImageNet-1k is one argument away."""
  c = lmim_ablations.get_config("row=mask90_gap4")
  assert (c.input.data, c.input.classes, c.evals.nn.classes) == ("imagenet2012", "imagenet100", "imagenet100")
  assert (c.batch_size, c.sim_reg.group_size, c.seed) == (1024, 128, 2)
  assert (c.total_epochs, c.warmup_epochs, c.optim.blr, c.optim.min_lr_frac) == (300.0, 30.0, 1.5e-4, 0.25)
  assert c.sim_reg.coeff == 0.0 and lmim_ablations.get_config("row=mask90_gap4_sim").sim_reg.coeff == 0.1
  assert (c.loss.tau, c.views.patch_gap, c.views.num_vis, c.model.variant) == (0.2, 4, 20, "B/16")
  resolved = full_recipe(lmim_ablations.get_config("row=dec_cues_mlp"), IMAGENET100).config
  assert resolved.optim.lr == pytest.approx(6e-4) and resolved.model.projector.dim == 4096
  in1k = lmim_ablations.get_config("row=mask90_gap4,dataset=in1k")
  assert (in1k.input.classes, in1k.evals.nn.classes, in1k.batch_size, in1k.sim_reg.group_size) == (None, None, 4096, 256)


def test_mse_rows_are_raw_mse_with_a_norm_mse_variant():
  for row in ("naive", "momentum", "loss_mse"):
    assert lmim_ablations.get_config(f"row={row}").loss.name == "mse"
    assert lmim_ablations.get_config(f"row={row},norm_mse").loss.name == "norm_mse"
  assert lmim_ablations.get_config("row=loss_l1,norm_mse").loss.name == "l1"  # only MSE rows change


def test_ablation_rows_follow_the_paper_ladder():
  rows = {r: lmim_ablations.get_config(f"row={r}") for r in ("naive", "momentum", "mask90_gap4_sim", "dec_cues_mlp")}
  assert rows["naive"].targets.mode == "joint" and rows["momentum"].targets.mode == "ema"
  assert rows["naive"].loss.name == "mse" and rows["naive"].views.num_vis == 49
  assert rows["mask90_gap4_sim"].model.decoder.type == "self" and rows["mask90_gap4_sim"].sim_reg.coeff == 0.1
  final = rows["dec_cues_mlp"]
  assert (final.model.decoder.type, final.model.decoder.visual_cues, final.model.projector.depth) == ("cross", True, 3)
  with pytest.raises(Exception, match="row"):
    lmim_ablations.get_config("row=nonsense")


def test_an_evaluation_preset_measures_raw_pixels_by_the_same_protocols():
  base, _ = cli.load_config("configs/eval.py:preset=demo")
  pix, _ = cli.load_config("configs/eval.py:preset=demo,feature=pixels")
  assert sorted(pix.evals) == ["knn", "linear", "nn"]  # collapse and pictures have no feature
  for name in pix.evals:
    assert pix.evals[name].feature == "pixels"
    assert {k: v for k, v in pix.evals[name].items() if k != "feature"} == \
        {k: v for k, v in base.evals[name].items() if k != "feature"}


def test_the_long_main_job_is_the_recipe_rows_run_field_for_field():
  """`lmim_demo.py:long` is what the README's three seeds measured: the recipe sweep's w128_d6 row
  at 2,400 steps. Every field that changes what is trained is the same (evals, checkpointing and
  logging may differ); its evals put raw pixels beside NN, k-NN and the linear probe."""
  from configs.studies import laptop_recipe  # pylint: disable=import-outside-toplevel
  from lmim import config_lib, study  # pylint: disable=import-outside-toplevel
  demo, _ = cli.load_config("configs/lmim_demo.py:long")
  row = study.cell_config(laptop_recipe.get_config("steps=2400,knobs=w128_d6"), "w128_d6", 0)
  assert config_lib.diff_configs(row.to_dict(), demo.to_dict()) == []
  assert (demo.input.data, demo.total_steps, demo.model.width, demo.model.depth) == ("shapes10k", 2400, 128, 6)
  for name in ("nn", "knn", "linear"):
    assert demo.evals[name].feature == "pooled_pre_norm" and demo.evals[f"{name}_pixels"].feature == "pixels"
    assert {k: v for k, v in demo.evals[name].items() if k not in ("feature", "at_init")} == \
        {k: v for k, v in demo.evals[f"{name}_pixels"].items() if k not in ("feature", "at_init")}
  assert demo.evals.nn.at_init
