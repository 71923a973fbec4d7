"""Evaluators, big_vision style: `config.evals.<name> = dict(type=<module>, ...)` names a module
`lmim.evaluators.<type>` that provides

  Evaluator(ctx, **fields)          fields = the config entry minus the schedule fields below
      .run(state) -> yields (metric name, value) pairs; `state` has .params and .ema_params
  datasets(fields) -> [(data, split, data_dir), ...]   what it reads (preflight: `--check`)
  open_dataset(data, split, data_dir, prefix)         optional: how it opens one of those (a sized
                                                      source; default: lmim.data.open_source, for
                                                      image classification splits)
  encoders(fields) -> {'online', 'ema'}                optional: the weights it reads (default: its
                                                      `encoder` field); an evaluator that compares
                                                      online and target weights names both

`ctx` (Context) carries what evaluators share: the encoder they probe (an encoder view: encode
function, patch size, evaluation size, channels, depth — never the method object), the method's
loss view for diagnostics that re-run the training loss (collapse), the mesh, the workdir and a
metric writer (pictures write PNGs and TensorBoard images there), the evaluator's own name. The trainer runs evaluators at `every_steps` / `every_epochs`, at the start when
`at_init` is set, and at the end; `python -m lmim.evaluate` runs them standalone on a checkpoint.
"""
import dataclasses
import importlib
import inspect
from typing import Any

from lmim.errors import ConfigError

# Fields the trainer reads itself; everything else goes to the evaluator.
SCHEDULE_FIELDS = ("type", "every_steps", "every_epochs", "at_init")
EVALUATORS = ("nn_loo", "knn", "linear_probe", "finetune", "fewshot", "davis", "collapse", "pictures")


@dataclasses.dataclass
class Context:
  encoder: Any                # lmim.methods.base.EncoderView
  losses: Any                 # lmim.methods.base.LossView
  mesh: Any
  name: str = "eval"
  workdir: str | None = None
  writer: Any = None          # lmim.metrics_writer.MetricWriter (images, scalars) or None
  step: int = 0


def context(method, mesh, name: str = "eval", workdir=None, writer=None, step: int = 0) -> Context:
  """The context of an evaluator of `method`'s encoder: the method's views, not the method."""
  return Context(encoder=method.encoder_view, losses=method.loss_view, mesh=mesh, name=name, workdir=workdir,
                 writer=writer, step=step)


def module_for(name: str, eval_cfg):
  kind = eval_cfg.get("type")
  if kind not in EVALUATORS:
    raise ConfigError(f"evals.{name}.type", kind, f"one of {list(EVALUATORS)}")
  return importlib.import_module(f"lmim.evaluators.{kind}")


def fields_of(eval_cfg) -> dict:
  return {k: v for k, v in eval_cfg.items() if k not in SCHEDULE_FIELDS}


def check_fields(name: str, eval_cfg):
  """The checks that need no method, mesh or data: the type, that every field is one the
  evaluator takes, and the shared probe choices (encoder, feature, resize). -> the module."""
  module = module_for(name, eval_cfg)
  fields = fields_of(eval_cfg)
  accepted = inspect.signature(module.Evaluator.__init__).parameters
  unknown = sorted(set(fields) - set(accepted))
  if unknown and not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
    valid = sorted(k for k in accepted if k not in ("self", "ctx"))
    raise ConfigError(f"evals.{name}.{unknown[0]}", fields[unknown[0]],
                      f"not a field of '{eval_cfg.type}'; valid fields: {', '.join(valid)}")
  from lmim.evaluators import common, features  # pylint: disable=import-outside-toplevel
  if "encoder" in fields and fields["encoder"] not in common.ENCODERS:
    raise ConfigError(f"evals.{name}.encoder", fields["encoder"], "'online' or 'ema'")
  if "feature" in fields:
    features.check_feature(fields["feature"], field=f"evals.{name}.feature")
  return module


def from_config(name: str, eval_cfg, *, method, mesh, workdir=None, writer=None):
  module = check_fields(name, eval_cfg)
  fields = fields_of(eval_cfg)
  ctx = context(method, mesh, name, workdir, writer)
  return module.Evaluator(ctx, **fields)


def protocol(name: str, eval_cfg) -> dict:
  """Every field an evaluator runs with: its defaults overlaid with the config's (what the result
  JSON records, so a number says how it was measured even where the config left a default)."""
  module = module_for(name, eval_cfg)
  params = inspect.signature(module.Evaluator.__init__).parameters
  out = {k: p.default for k, p in params.items()
         if k not in ("self", "ctx") and p.default is not inspect.Parameter.empty and p.kind != p.VAR_KEYWORD}
  return {"type": eval_cfg.get("type"), **out, **fields_of(eval_cfg)}


def encoders_read(eval_cfg) -> set:
  """Which trees of a checkpoint an evaluator reads: 'online' and/or 'ema'."""
  module = module_for("?", eval_cfg)
  fields = fields_of(eval_cfg)
  declared = getattr(module, "encoders", None)
  return set(declared(fields)) if declared else {fields.get("encoder", "online")}


def open_for_preflight(module, data: str, split: str, data_dir, name: str) -> int:
  """Open one dataset the way `module` reads it -> its number of examples (one-line errors)."""
  opener = getattr(module, "open_dataset", None)
  if opener is not None:
    return len(opener(data, split, data_dir, f"evals.{name}"))
  from lmim.data import open_source  # pylint: disable=import-outside-toplevel
  return open_source(data, split, data_dir, config_prefix=f"evals.{name}")[1].num_examples
