"""Evaluators, big_vision style: `config.evals.<name> = dict(type=<module>, ...)` names a module
`lmim.evaluators.<type>` whose `Evaluator(method=..., mesh=..., **fields).run(state)` yields
(metric name, value) pairs. The trainer runs them at `every_steps` / `every_epochs`, at the start
when `at_init` is set, and at the end; the same evaluators run standalone on a checkpoint.
"""
import importlib

from lmim.errors import ConfigError

# Fields the trainer reads itself; everything else goes to the evaluator.
SCHEDULE_FIELDS = ("type", "every_steps", "every_epochs", "at_init")
EVALUATORS = ("nn_loo",)


def from_config(name: str, eval_cfg, *, method, mesh):
  kind = eval_cfg.get("type")
  if kind not in EVALUATORS:
    raise ConfigError(f"evals.{name}.type", kind, f"one of {list(EVALUATORS)}")
  module = importlib.import_module(f"lmim.evaluators.{kind}")
  fields = {k: v for k, v in eval_cfg.items() if k not in SCHEDULE_FIELDS}
  try:
    return module.Evaluator(method=method, mesh=mesh, **fields)
  except TypeError as e:  # an unknown field
    raise ConfigError(f"evals.{name}", sorted(fields), f"fields accepted by '{kind}': {e}") from None
