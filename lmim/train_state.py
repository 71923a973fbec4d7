"""The train state: a pytree the jitted step consumes (donated) and returns.

    step        int32 scalar: optimiser steps taken; the schedules and the view RNG read it
    params      what the optimiser trains ({'encoder', 'decoder'} for Latent MIM)
    ema_params  the momentum target encoder (None for methods without one)
    opt_state   optax state (its own step count drives the learning-rate schedule)

Randomness is not state: every draw comes from fold_in(key(config.seed), step), so a resumed run
draws exactly what an uninterrupted one would. Checkpoints store params, ema_params and
opt_state as separate items (see lmim/checkpoint.py) so probes can restore one alone; a method's
host-side state (CMAE's crop boxes) travels beside them as the item `host_state`.
"""
from typing import Any

import flax.struct

CHECKPOINT_ITEMS = ("params", "ema_params", "opt_state", "host_state")


@flax.struct.dataclass
class TrainState:
  step: Any
  params: Any
  ema_params: Any
  opt_state: Any

  def items(self) -> dict:
    """The checkpoint items (the step travels in the metadata)."""
    return {"params": self.params, "ema_params": self.ema_params, "opt_state": self.opt_state}
