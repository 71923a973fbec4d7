"""Pretraining methods. The import path is the registry: `config.method = 'latent_mim'` loads
`lmim.methods.latent_mim`, whose `build(config, channels)` returns an object with

  init(rng) -> (params, ema_params)          params = what the optimiser trains
  update_targets(ema_params, params, step)    once per optimiser step, before any target forward
  loss(params, ema_params, batch, keys, step) -> (scalar loss, dict of scalar metrics)
  train_image_size, eval_image_size, encoder  geometry and the encoder module for probing

and whose `validate(config)` raises a one-line ConfigError before anything compiles.
The trainer, sharding, checkpointing, data and logging never look inside a method.
"""
import importlib

from lmim.errors import ConfigError

METHODS = ("latent_mim", "mae", "pcae", "data2vec", "ijepa")


def get(name: str):
  if name not in METHODS:
    raise ConfigError("method", name, f"one of {list(METHODS)}")
  return importlib.import_module(f"lmim.methods.{name}")
