"""The method interface: what the trainer, the evaluators and the probes may ask of a pretraining
method, with the defaults most methods share. A method is a Python object closed over by the jitted
step (never traced itself); everything it computes on device is a pure function of its arguments.

A method implements `init` and `loss`, sets `encoder` and says its image sizes (`GridMethod` does for
a g×g grid of patches); everything else has a default here:

  init(rng) -> (params, ema_params)        params: what the optimiser trains; ema_params: the EMA
                                           target encoder's parameters, or None without targets
  loss(params, ema_params, batch, keys, step, train=True) -> (scalar loss, {name: scalar})
                                           one micro-batch; views drawn on device from `keys`
  momentum(step) -> scalar | None          the EMA momentum, from the shared `ema` block the methods
                                           with EMA targets add (`ema_config`); None without one
  update_targets(ema_params, params, step) θ_T ← m·θ_T + (1−m)·θ_O of the encoder, once per step
  encode(encoder_params, images)           full images at gap 0 -> the encoder's named outputs
  train_image_size / eval_image_size       pixels per side of a training crop / evaluation image
  num_views                                crops of each example per step (the pipeline makes them)
  schedule_metrics                         metrics that are schedule values (logged as the last)
  loss_group                               the loss sees examples in whole groups of this many
  decay_rule(name, ndim) -> bool           which parameters get weight decay
  pipeline_args(host_state) -> dict        extra arguments of lmim.data.train_batches
  host_state_init / host_state_due / compute_host_state
                                           numpy state refreshed on the host on a schedule and
                                           checkpointed (CMAE's ContrastiveCrop boxes)
  health_warnings(summary, step) -> [str]  run-health checks on the logged metrics (collapse)
  encoder_view / loss_view                 what evaluators see: the encoder (encode, geometry) and,
                                           for diagnostics that re-run the loss, the loss
"""
import abc
import dataclasses
import functools
from typing import Any, Callable, ClassVar

import jax
import ml_collections as mlc

from lmim import optim, schedules
from lmim.errors import ConfigError
from lmim.methods.common import ema_update, encode_full_images
from lmim.models import encoder_dims

# The phases of a step, as jax.named_scope names: a method wraps its target encoder, online encoder,
# decoder (predictor, head) and loss in these; the trainer its EMA and optimiser updates. They change
# nothing but the names XLA keeps, which lmim.benchmark reads to break a profiled step down.
PHASES = ("target_encoder", "online_encoder", "decoder", "loss", "ema_update", "optimizer")

# Target tokens whose mean pairwise cosine exceeds this are collapsing (docs/latent_mim.md §9).
COLLAPSE_SIM = 0.95


def ema_config(momentum: float, momentum_end: float = 1.0, schedule: str = "cosine") -> mlc.ConfigDict:
  """The `ema` block every method with EMA targets adds: one name for the momentum everywhere
  (`ema.momentum` at step 0, `ema.momentum_end` at the last step, `ema.schedule` between)."""
  return mlc.ConfigDict(dict(momentum=momentum, momentum_end=momentum_end, schedule=schedule))


def validate_ema(config) -> None:
  """One-line errors for the `ema` block, where the method has one."""
  ema = config.get("ema")
  if ema is None:
    return
  for k in ("momentum", "momentum_end"):
    if not 0.0 <= ema[k] <= 1.0:
      raise ConfigError(f"ema.{k}", ema[k], "must be in [0, 1]")
  if ema.schedule not in schedules.EMA_SCHEDULES:
    raise ConfigError("ema.schedule", ema.schedule, f"one of {list(schedules.EMA_SCHEDULES)}")


@dataclasses.dataclass(frozen=True, eq=False)
class EncoderView:
  """What a probe may know of a method: its encoder (big_vision hands evaluators a predict_fn).
  One object per method (identity-hashed), so compilations keyed on it are reused."""
  encode: Callable          # (encoder_params, images, positions='extrapolate') -> named representations
  module: Any               # the flax encoder (fine-tuning clones it with its own drop path)
  patch_size: int
  eval_image_size: int
  channels: int
  depth: int | None


@dataclasses.dataclass(frozen=True, eq=False)
class LossView:
  """What a diagnostic that re-runs the training loss on evaluation images needs (the collapse
  evaluator's method Sims): the loss and init functions and the geometry of a training batch."""
  loss: Callable            # (params, ema_params, batch, keys, step, train) -> (loss, metrics)
  init: Callable            # rng -> (params, ema_params)
  num_views: int
  loss_group: int
  train_image_size: int


class Method(abc.ABC):
  """Base of every method: the defaults of the interface above."""
  num_views: ClassVar[int] = 1
  # Logged metrics that are schedule values: the log line shows the last step's, not the mean.
  schedule_metrics: ClassVar[tuple[str, ...]] = ()
  decay_rule = staticmethod(optim.official_decay)
  encoder: Any  # the flax encoder module the probes run (`encode`)
  patch_size: int

  def __init__(self, config, channels: int):
    self.config, self.channels = config, channels

  # What each method must say ------------------------------------------------------------------
  @abc.abstractmethod
  def init(self, rng) -> tuple[Any, Any]:
    """-> (params, ema_params or None)."""

  @abc.abstractmethod
  def loss(self, params, ema_params, batch: dict, keys: jax.Array, step, train: bool = True):
    """-> (scalar loss, dict of scalar metrics) for one micro-batch."""

  @property
  @abc.abstractmethod
  def train_image_size(self) -> int: ...

  @property
  @abc.abstractmethod
  def eval_image_size(self) -> int: ...

  # Targets ------------------------------------------------------------------------------------
  def momentum(self, step):
    """The EMA momentum at `step` from the `ema` block; None for a method without one."""
    ema = self.config.get("ema")
    if ema is None:
      return None
    return schedules.ema_momentum(step, total_steps=self.config.total_steps, base=ema.momentum,
                                  end=ema.momentum_end, schedule=ema.schedule)

  def update_targets(self, ema_params, params, step):
    """θ_T ← m·θ_T + (1−m)·θ_O over the online encoder (projector included where it has one)."""
    if ema_params is None:
      return None
    return ema_update(ema_params, params["encoder"], self.momentum(step))

  @property
  def loss_group(self) -> int:
    """The loss sees examples in whole groups of this many (1: each example on its own); an
    evaluator that runs `loss` on a batch keeps to whole groups."""
    return 1

  # Probing ------------------------------------------------------------------------------------
  def encode(self, encoder_params, images, positions: str = "extrapolate") -> dict:
    """Full images at gap 0 (the evaluation geometry) -> the encoder's named representations."""
    return encode_full_images(self.encoder, encoder_params, images, self.patch_size, positions)

  @functools.cached_property
  def encoder_view(self) -> EncoderView:
    return EncoderView(self.encode, self.encoder, self.patch_size, self.eval_image_size, self.channels,
                       getattr(self.encoder, "depth", None))

  @functools.cached_property
  def loss_view(self) -> LossView:
    return LossView(self.loss, self.init, self.num_views, self.loss_group, self.train_image_size)

  # Input pipeline and host state --------------------------------------------------------------
  def pipeline_args(self, host_state) -> dict:
    """Arguments of lmim.data.train_batches beyond the shared ones (none by default)."""
    del host_state
    return {}

  def host_state_init(self, num_examples: int):
    """Initial host state (numpy, checkpointed with the train state), or None: no host state."""
    del num_examples
    return None

  def host_state_due(self, step: int) -> bool:
    del step
    return False

  def compute_host_state(self, params, ema_params, source, info, mesh):
    """The refreshed host state when `host_state_due`; without host state there is none (None)."""
    del params, ema_params, source, info, mesh
    return None

  # Run health ---------------------------------------------------------------------------------
  def health_warnings(self, summary: dict, step: int) -> list[str]:
    """Warnings about the run from the logged metrics (means since the last log line). Latent
    targets can collapse while the loss looks healthy: every target token points the same way."""
    sim = summary.get("sim_trg")
    if sim is not None and sim > COLLAPSE_SIM:
      return [f"target Sim {sim:.3f} > {COLLAPSE_SIM} at step {step}: the targets are collapsing "
              "(mean pairwise cosine of target tokens); the loss can look healthy while this happens"]
    return []


class GridMethod(Method):
  """A method on a g×g grid of p-px patches: training crops and evaluation images are g·p px
  (Latent MIM widens its training crops by the gap between cells)."""

  def __init__(self, config, channels: int):
    super().__init__(config, channels)
    d = encoder_dims(config.model)
    self.patch_size, self.width, self.grid_size = d["patch_size"], d["width"], config.model.grid_size
    self.num_patches = self.grid_size ** 2

  @property
  def train_image_size(self) -> int:
    return self.grid_size * self.patch_size

  @property
  def eval_image_size(self) -> int:
    return self.grid_size * self.patch_size

  @property
  def patch_dim(self) -> int:
    return self.patch_size ** 2 * self.channels
