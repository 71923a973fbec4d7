"""`lmim-benchmark --official`: the official training step built from an lmim config.

What runs everywhere: the config → official constructor arguments mapping (on every official
fixture: the fixture's own arguments come back), the official optimiser's weight-decay rule (the
fixture's list of decayed parameters), and the one-line errors. What needs torch, timm and a
checkout of the official code (LMIM_OFFICIAL=path; skipped in CI, which has none of them): the
official network built from an lmim config has lmim's trainable parameter count and its step
trains.
"""
import importlib.util
import os

import numpy as np
import pytest
from clu import parameter_overview

from fixtures_lib import fixture_dirs, load
from lmim import cli, config_lib, convert, methods, official_step
from lmim.errors import ConfigError, FlagError

DIRS = fixture_dirs("official_lmim")
CONSTRUCTOR = ("grid_size", "patch_size", "patch_gap", "embed_dim", "depth", "num_heads", "decoder_embed_dim",
               "decoder_depth", "decoder_num_heads", "tau", "num_vis", "avg_vis_mask_token", "avg_sim_coeff",
               "mask_target", "loss", "freeze_pe", "mlp_dim", "mlp_depth")


def _method(config, channels: int = 3):
  cfg = config_lib.resolve(config, 1_281_167)
  return cfg, methods.build(cfg, channels, validated=False)


@pytest.mark.parametrize("folder", DIRS, ids=[d.name for d in DIRS])
def test_an_official_config_comes_back_as_its_own_constructor_arguments(folder):
  hp = load(folder)[0]
  got = official_step.official_hparams(*_method(convert.config_from_official(hp)))
  keys = [k for k in CONSTRUCTOR if k in hp]
  assert len(keys) >= len(CONSTRUCTOR) - 1 and {k: got[k] for k in keys} == {k: hp[k] for k in keys}
  # The fixtures are built with target_depth = depth and freeze_pe=True (their README).
  assert got["target_depth"] == hp["depth"] and got["freeze_pe"] is True


@pytest.mark.parametrize("folder", DIRS, ids=[d.name for d in DIRS])
def test_the_official_weight_decay_rule_decays_exactly_the_fixtures_list(folder):
  hp, sd, _, _ = load(folder)
  trainable = {n: v for n, v in sd.items()    # state_dict minus the EMA target and the frozen tables
               if not n.startswith("target_encoder.") and not n.endswith("pos_embed.pos_embeds")}
  decayed = sorted(n for n, v in trainable.items() if not official_step.no_weight_decay(n, v))
  assert decayed == sorted(hp["decay_params"])


def test_configs_the_official_code_cannot_run_are_one_line_errors(tmp_path):
  config, _ = cli.load_config("configs/lmim_demo.py")
  with config.unlocked():
    config.model.decoder.type = "self"
  with pytest.raises(ConfigError, match="model.decoder.type"):
    official_step.official_hparams(*_method(config))
  mae, _ = cli.load_config("configs/mae_vitb16_in1k.py:runlocal")
  with pytest.raises(ConfigError, match="method"):
    official_step.official_hparams(*_method(mae))
  with pytest.raises(ConfigError, match="input channels"):   # the demo's digits are grey
    official_step.official_hparams(*_method(cli.load_config("configs/lmim_demo.py")[0], channels=1))
  with pytest.raises(FlagError, match="missing models_lmim.py"):
    official_step.load(str(tmp_path))


OFFICIAL = os.environ.get("LMIM_OFFICIAL", "")


@pytest.mark.skipif(not OFFICIAL, reason="LMIM_OFFICIAL (a checkout of the official code) is not set")
def test_the_official_step_has_lmims_network_and_trains():
  pytest.importorskip("torch")
  if importlib.util.find_spec("timm") is None:   # not imported here: its torchvision may not load
    pytest.skip("timm is not installed")
  config, _ = cli.load_config("configs/lmim_vitb16_in1k.py:variant=Ti/8")
  with config.unlocked():
    config.model.grid_size, config.views.patch_gap, config.views.num_vis = 4, 2, 4
    config.model.projector.dim, config.model.decoder.width, config.model.decoder.depth = 256, 64, 1
  cfg, method = _method(config)
  import jax  # pylint: disable=import-outside-toplevel
  params = method.init(jax.random.key(0))[0]
  ref = official_step.OfficialStep(OFFICIAL, official_step.official_hparams(cfg, method), lr=1e-3)
  assert ref.trainable_parameters() == parameter_overview.count_parameters(params)
  size = method.train_image_size
  images = np.random.default_rng(0).standard_normal((8, 3, size, size), np.float32)
  losses = [ref.step(images) for _ in range(8)]
  assert losses[-1] < losses[0]            # the same batch again and again: the step fits it
