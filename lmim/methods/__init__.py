"""Pretraining methods. The import path is the registry: `config.method = 'mae'` loads
`lmim.methods.mae`. A method module provides

  add_config(c)                 its own config block(s) and its defaults for the shared fields
  validate(config)              one-line ConfigErrors, before anything compiles
  METHOD                        its class, a lmim.methods.base.Method (the interface the trainer,
                                evaluators and probes use: init, loss, targets, encode, geometry,
                                pipeline arguments, host state, run-health checks)

The trainer, sharding, checkpointing, data and logging never look further inside a method.
"""
import importlib

from lmim.errors import ConfigError
from lmim.methods.base import validate_ema

METHODS = ("latent_mim", "mae", "pcae", "data2vec", "ijepa", "cmae")


def get(name: str):
  if name not in METHODS:
    raise ConfigError("method", name, f"one of {list(METHODS)}")
  return importlib.import_module(f"lmim.methods.{name}")


def validate(config) -> None:
  """The method's own checks of `config` (the shared fields are config_lib.validate_run's)."""
  get(config.method).validate(config)
  validate_ema(config)


def build(config, channels: int, *, validated: bool = False):
  """The method object for `config` on images with `channels` channels (checked first unless
  the caller has just run `validate`)."""
  module = get(config.method)
  if not validated:
    validate(config)
  return module.METHOD(config, channels)
