"""The config's fields: bad input is one clear line naming the field, the value and what is valid,
before compiling; durations and mesh shapes resolve; the README's table names real fields; a
checkpoint saved under renamed fields still resumes."""
import pytest

from lmim import config_lib, sharding, train
from lmim.errors import ConfigError
from tiny import tiny_config


@pytest.fixture(autouse=True)
def no_compilation(monkeypatch):
  """Any config error must surface before the trainer builds a single jitted function."""
  def fail(*a, **k):
    raise AssertionError("jax.jit was reached before the config error")
  monkeypatch.setattr(train.jax, "jit", fail)


CASES = [
    ({"views.num_vis": 0}, "views.num_vis", "[1, 15]"),
    ({"views.num_vis": 16}, "views.num_vis", "[1, 15]"),
    ({"model.num_heads": 3}, "model.num_heads", "divide the encoder width 32"),
    ({"model.width": 30, "model.num_heads": 3}, "model.width", "divisible by 4"),
    ({"model.decoder.num_heads": 3}, "model.decoder.num_heads", "divide the decoder width 16"),
    ({"loss.name": "l3"}, "loss.name", "patch_disc"),
    ({"method": "simclr"}, "method", "latent_mim"),
    ({"model.variant": "XL/16"}, "model.variant", "Ti/S/B/L/H"),
    ({"model.dtype": "float16"}, "model.dtype", "bfloat16"),
    ({"mesh.data": 3}, "mesh", "device count 8"),
    ({"mesh.data": 2, "mesh.fsdp": 2}, "mesh", "device count 8"),
    ({"mesh.data": -1, "mesh.fsdp": -1}, "mesh", "at most one axis"),
    ({"batch_size": 12}, "batch_size", "data-parallel size (8"),
    ({"batch_size": 16, "accum_steps": 4}, "batch_size", "times accum_steps (4) = 32"),
    ({"sim_reg.group_size": 3}, "sim_reg.group_size", "divide the micro-batch"),
    ({"optim.min_lr_frac": 1.5}, "optim.min_lr_frac", "[0, 1]"),
    ({"total_epochs": 5.0}, "total_steps", "not both"),
    ({"ema.momentum": 1.5}, "ema.momentum", "[0, 1]"),
    ({"ema.momentum_end": -0.1}, "ema.momentum_end", "[0, 1]"),
    ({"ema.schedule": "step"}, "ema.schedule", "'cosine', 'linear'"),
]


@pytest.mark.parametrize("overrides,field,valid", CASES, ids=[c[1] + ":" + str(list(c[0].values())) for c in CASES])
def test_bad_config_is_one_line_naming_field_and_valid_range(overrides, field, valid):
  with pytest.raises(ConfigError) as e:
    train.prepare(tiny_config(**overrides))
  msg = str(e.value)
  assert "\n" not in msg
  assert msg.startswith(f"config.{field}=")
  assert valid in msg


def test_mesh_shape_fills_the_free_axis():
  cfg = tiny_config()
  assert sharding.mesh_shape(cfg.mesh, 8) == (8, 1)
  cfg.mesh.update(dict(data=2, fsdp=-1))
  assert sharding.mesh_shape(cfg.mesh, 8) == (2, 4)


def test_durations_in_epochs_resolve_to_steps():
  cfg = tiny_config(**{"total_steps": None, "warmup_steps": None, "total_epochs": 2.0, "warmup_epochs": 0.5})
  r = config_lib.resolve(cfg, num_train_examples=100)
  assert r.steps_per_epoch == 6 and r.total_steps == 12 and r.warmup_steps == 3.0
  assert r.optim.lr == pytest.approx(cfg.optim.blr * 16 / 256)


def test_parse_arg_rejects_unknown_keys():
  assert config_lib.parse_arg("variant=S/16,runlocal", variant="B/16", runlocal=False).runlocal is True
  with pytest.raises(ConfigError, match="variant"):
    config_lib.parse_arg("varaint=S/16", variant="B/16")


def test_config_override_typo_fails_on_locked_config():
  from configs import lmim_demo  # pylint: disable=import-outside-toplevel
  cfg = lmim_demo.get_config()
  cfg.lock()
  with pytest.raises(AttributeError):
    cfg.optim.blrr = 1e-3


@pytest.mark.parametrize("value", ["3:1", "a:b", "5", "-1:2"])
def test_bad_profile_steps_is_one_line(value):
  with pytest.raises(ConfigError, match="profile_steps"):
    train.prepare(tiny_config(**{"profile_steps": value}))


def test_every_field_the_readme_config_table_names_exists():
  """The README's config table and the code agree (it once documented `ema.momentum`)."""
  import pathlib  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  table = readme[readme.index("| field | default (official) | meaning |"):]
  table = table[:table.index("\n\n")]
  names = []
  for row in table.splitlines()[2:]:
    for cell in re.findall(r"`([^`]+)`", row.split("|")[1]):
      m = re.fullmatch(r"(.*)\{(.*)\}", cell)
      names += [m[1] + part for part in m[2].split(",")] if m else [cell]
  configs = [config_lib.base_config(m) for m in ("latent_mim", "mae", "cmae", "pcae", "data2vec", "ijepa")]
  missing = []
  for name in names:
    if "<" in name or "*" in name:
      continue  # patterns: evals.<name>, checkpoint.every_*
    if not any(_has_field(c, name) for c in configs):
      missing.append(name)
  assert len(names) > 40 and not missing, missing


def _has_field(config, dotted: str) -> bool:
  node = config
  for part in dotted.split("."):
    if part not in node:
      return False
    node = node[part]
  return True


# The config each method saved before the EMA fields moved into one `ema` block (the old names).
OLD_MOMENTUM_FIELDS = {
    "latent_mim": {"targets": {"momentum": 0.99}},
    "pcae": {"pcae": {"momentum": 0.9999}},
    "data2vec": {"data2vec": {"momentum": 0.9998, "momentum_end": 0.9998}},
    "ijepa": {"ijepa": {"momentum": 0.996, "momentum_end": 1.0}},
}


@pytest.mark.parametrize("method", list(OLD_MOMENTUM_FIELDS))
def test_checkpoints_saved_under_the_old_momentum_names_still_resume(method):
  """A run saved with `targets.momentum` (or pcae./data2vec./ijepa.momentum) is the same config as
  today's `ema` block: it resumes (no diff) and rebuilds the same schedule; a changed value is
  still a difference."""
  now = config_lib.base_config(method).to_dict()
  old = {k: (dict(v) if isinstance(v, dict) else v) for k, v in now.items() if k != "ema"}
  for block, fields in OLD_MOMENTUM_FIELDS[method].items():
    old[block] = {**old[block], **fields}
  defaults = config_lib.base_config(method).to_dict()
  assert config_lib.diff_configs(old, now, defaults=defaults) != []          # read as saved: differs
  assert config_lib.diff_configs(config_lib.upgrade(old), now, defaults=defaults) == []
  assert config_lib.upgrade(old)["ema"] == now["ema"]
  changed = config_lib.base_config(method)
  changed.ema.momentum = 0.5
  assert config_lib.diff_configs(config_lib.upgrade(old), changed.to_dict(), defaults=defaults) == [
      f"ema.momentum: checkpoint={now['ema']['momentum']!r} now=0.5"]
