"""Pretraining methods. The import path is the registry: `config.method = 'mae'` loads
`lmim.methods.mae`. A method module provides

  add_config(c)                 its own config block(s) and its defaults for the shared fields
  validate(config)              one-line ConfigErrors, before anything compiles
  build(config, channels)       -> an object with
      init(rng) -> (params, ema_params)          params = what the optimiser trains; EMA or None
      update_targets(ema_params, params, step)    once per optimiser step, before any target forward
      loss(params, ema_params, batch, keys, step) -> (scalar loss, dict of scalar metrics)
      encode(encoder_params, images)              the encoder's named representations (probes)
      train_image_size, eval_image_size
    and optionally
      decay_rule(name, ndim) -> bool              weight decay (default: Latent MIM's official rule)
      momentum(step)                              logged EMA momentum
      num_views                                   crops per example (default 1)
      host_state_init / host_state_due / compute_host_state / crop_boxes
                                                  host-side state refreshed on a schedule and saved
                                                  with checkpoints (CMAE's ContrastiveCrop boxes)

The trainer, sharding, checkpointing, data and logging never look further inside a method.
"""
import importlib

from lmim.errors import ConfigError

METHODS = ("latent_mim", "mae", "pcae", "data2vec", "ijepa", "cmae")


def get(name: str):
  if name not in METHODS:
    raise ConfigError("method", name, f"one of {list(METHODS)}")
  return importlib.import_module(f"lmim.methods.{name}")
