"""Official checkpoints in, encoders out: the strict converter and the probing loader."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fixtures_lib import fixture_dirs, load
from lmim import convert, probe, train
from lmim.errors import CheckpointError
from lmim.evaluators import features
from tiny import tiny_config

FIXTURE = fixture_dirs("official_lmim")[0]


def fixture_config():
  hp = json.loads((FIXTURE / "config.json").read_text())
  return convert.config_from_official(hp), hp


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("trained"))
  train.train(tiny_config(), wd, stop_after_steps=3)
  return wd


@pytest.mark.slow
def test_converter_writes_a_checkpoint_the_probe_loader_reads(tmp_path):
  cfg, hp = fixture_config()
  _, sd, inputs, expected = load(FIXTURE)
  np.savez(tmp_path / "official.npz", **{f"module.{k}": v for k, v in sd.items()})  # DDP prefix
  convert.convert_checkpoint(cfg, str(tmp_path / "official.npz"), str(tmp_path / "wd"))
  enc = probe.load_encoder(str(tmp_path / "wd"), which="online")
  images = jnp.asarray(inputs["eval_images"].transpose(0, 2, 3, 1))
  out = enc.apply(enc.params, images)
  assert enc.image_size == hp["eval_image_size"] and enc.step == 0
  assert out["patch_tokens"].shape == (3, hp["num_patches"], hp["embed_dim"])
  # The pooled feature is the official NN feature of these (pre-step) weights.
  direct = convert.convert(sd, convert.target_trees(cfg)[2], convert.frozen_pos_tables(cfg))
  want = features.select(enc.method.encode(direct["params"]["encoder"], images), "pooled_pre_norm")
  np.testing.assert_allclose(out["pooled"], want, rtol=1e-6, atol=1e-6)
  ema = probe.load_encoder(str(tmp_path / "wd"), which="ema")
  np.testing.assert_array_equal(ema.params["cls_token"], sd["target_encoder.cls_token"])


def test_converter_rejects_missing_and_extra_keys():
  cfg, _ = fixture_config()
  _, sd, _, _ = load(FIXTURE)
  _, _, abstract = convert.target_trees(cfg)
  tables = convert.frozen_pos_tables(cfg)
  missing = {k: v for k, v in sd.items() if k != "encoder.blocks.1.mlp.fc2.weight"}
  with pytest.raises(CheckpointError, match=r"not filled \(1\): params/encoder/blocks_1/mlp/fc2/kernel"):
    convert.convert(missing, abstract, tables)
  extra = dict(sd, **{"encoder.blocks.9.attn.qkv.weight": np.zeros((3, 3), np.float32)})
  with pytest.raises(CheckpointError, match=r"not consumed \(1\): encoder.blocks.9.attn.qkv.weight"):
    convert.convert(extra, abstract, tables)
  wrong_grid = dict(sd, **{"encoder.pos_embed.pos_embeds": sd["encoder.pos_embed.pos_embeds"] + 0.1})
  with pytest.raises(CheckpointError, match="differs from lmim's sin-cos table"):
    convert.convert(wrong_grid, abstract, tables)


def test_state_dict_round_trips_through_official_names():
  cfg, _ = fixture_config()
  _, sd, _, _ = load(FIXTURE)
  _, _, abstract = convert.target_trees(cfg)
  back = convert.to_official(convert.convert(sd, abstract, convert.frozen_pos_tables(cfg)))
  assert set(back) == {k for k in sd if not k.endswith("pos_embeds")}
  for k, v in back.items():
    np.testing.assert_array_equal(v, sd[k])


@pytest.mark.slow
def test_probe_loader_reads_a_trained_workdir(trained_workdir):
  online = probe.load_encoder(trained_workdir, which="online")
  ema = probe.load_encoder(trained_workdir, which="ema", step=3)
  assert online.step == ema.step == 3 and online.image_size == 16 and online.mean == (0.1307,)
  images = jnp.zeros((2, 16, 16, 1))
  a, b = jax.jit(online.apply)(online.params, images), ema.apply(ema.params, images)
  assert a["pooled"].shape == (2, 32) and a["patch_tokens"].shape == (2, 16, 32)
  assert not np.allclose(a["pooled"], b["pooled"])  # online moved away from the EMA target
  with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
    probe.load_encoder(trained_workdir, step=5)


@pytest.mark.slow
def test_mae_encoder_only_release_converts_and_probes(tmp_path):
  """MAE's public `mae_pretrain_vit_*.pth` hold the encoder alone: --encoder_only fills exactly it."""
  mae_dir = fixture_dirs("official_mae")[0]
  hp, sd, inputs, _ = load(mae_dir)
  cfg = convert.config_from_official(hp)
  encoder_keys = {k: v for k, v in sd.items()
                  if not k.startswith(("decoder", "mask_token"))}
  np.savez(tmp_path / "enc.npz", **encoder_keys)
  with pytest.raises(CheckpointError, match="not filled"):
    convert.convert_checkpoint(cfg, str(tmp_path / "enc.npz"), str(tmp_path / "full"))
  convert.convert_checkpoint(cfg, str(tmp_path / "enc.npz"), str(tmp_path / "wd"), encoder_only=True)
  enc = probe.load_encoder(str(tmp_path / "wd"), which="online")
  images = jnp.asarray(inputs["images"].transpose(0, 2, 3, 1))
  assert enc.apply(enc.params, images)["cls"].shape == (3, hp["embed_dim"])
  with pytest.raises(CheckpointError, match="not consumed"):   # a full checkpoint is not encoder-only
    convert.convert_checkpoint(cfg, str(mae_dir / "params.npz"), str(tmp_path / "wd2"), encoder_only=True)
