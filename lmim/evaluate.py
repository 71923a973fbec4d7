"""Evaluate a checkpoint: any lmim workdir, or an official checkpoint converted with lmim.convert.

    python -m lmim.evaluate --workdir workdirs/demo --config configs/eval.py:preset=demo
    python -m lmim.evaluate --workdir WD --config configs/eval.py:preset=mae_linear --step 40000
    python -m lmim.evaluate --workdir WD --config configs/eval.py:preset=all --check   # preflight only

Each entry of `config.evals` is an evaluator (lmim/evaluators/<type>.py). The run writes one JSON
file per run (`<workdir>/eval/<config name>_step<step>.json`: config, checkpoint step, every
metric, seconds per evaluator), TensorBoard scalars under `eval/<name>/<metric>` at the checkpoint
step, and prints a table. `--check` lists each evaluator's datasets and whether they are prepared
(with the command to prepare those that are not), and runs nothing.
"""
import json
import logging
import os
import sys
import time

import jax
import ml_collections as mlc

from lmim import evaluators, probe, sharding
from lmim.errors import LmimError
from lmim.metrics_writer import MetricWriter, console_logging

log = logging.getLogger("lmim")


class EvalState:
  """The two trees evaluators read (the train state's shape, without the optimiser)."""

  def __init__(self, params, ema_params):
    self.params, self.ema_params = params, ema_params


def preflight(config) -> list[dict]:
  """For every evaluator: its type and each dataset it reads, prepared or not (with the fix)."""
  rows = []
  for name, ev in config.evals.items():
    module = evaluators.module_for(name, ev)
    for d, split, data_dir in module.datasets(evaluators.fields_of(ev)):
      try:
        status = f"ready ({evaluators.open_for_preflight(module, d, split, data_dir, name)} examples)"
        ok = True
      except LmimError as e:
        status, ok = str(e), False
      rows.append(dict(eval=name, type=ev.type, data=d, split=split, ok=ok, status=status))
  return rows


def format_preflight(rows: list[dict]) -> str:
  width = max((len(f"{r['eval']} ({r['type']})") for r in rows), default=10)
  lines = [f"{'evaluator':<{width}}  dataset / split  ->  status"]
  for r in rows:
    lines.append(f"{r['eval'] + ' (' + r['type'] + ')':<{width}}  {r['data']} / {r['split']}  ->  "
                 f"{'OK ' if r['ok'] else 'MISSING '}{r['status']}")
  return "\n".join(lines)


def evaluate(config, workdir: str, *, step: int | None = None, results_name: str = "eval",
             devices=None) -> dict:
  """Run every evaluator of `config.evals` on a checkpoint; returns the results dict."""
  mesh = sharding.make_mesh(config.get("mesh", mlc.ConfigDict(dict(data=-1, fsdp=1))), devices)
  # The trees the evaluators read: an EMA named by an `encoder=ema` field must exist; one read
  # alongside the online weights (collapse) is restored where the method keeps one.
  named = {ev.get("encoder", "online") for ev in config.evals.values()}
  wants = set().union(*(evaluators.encoders_read(ev) for ev in config.evals.values()))
  ema = True if "ema" in named else ("if_kept" if "ema" in wants else False)
  restored = probe.restore(workdir, step=step, online="online" in wants, ema=ema, mesh=mesh)
  state = EvalState(restored.params, restored.ema_params)
  out_dir = os.path.join(workdir, "eval")
  writer = MetricWriter(out_dir)
  results = {"workdir": os.path.abspath(workdir), "checkpoint_step": restored.step,
             "method": restored.config.method, "config": config.to_dict(),
             "protocol": {name: evaluators.protocol(name, ev) for name, ev in config.evals.items()},
             "metrics": {}, "seconds": {}}
  try:
    evals = {name: evaluators.from_config(name, ev, method=restored.method, mesh=mesh, workdir=out_dir,
                                          writer=writer) for name, ev in config.evals.items()}
    for name, ev in evals.items():
      ev_ctx = getattr(ev, "ctx", None)
      if ev_ctx is not None:
        ev_ctx.step = restored.step
      t0 = time.perf_counter()
      for metric, value in ev.run(state):
        results["metrics"][f"{name}/{metric}"] = float(value)
        log.info("%s/%s = %.4g", name, metric, value)
      results["seconds"][name] = time.perf_counter() - t0
      if getattr(ev, "notes", None):
        results.setdefault("notes", {})[name] = ev.notes
    writer.write_scalars(restored.step, {f"eval/{k}": v for k, v in results["metrics"].items()})
  finally:
    writer.close()
  if jax.process_index() == 0:
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{results_name}_step{restored.step}.json")
    with open(path, "w", encoding="utf-8") as f:
      json.dump(results, f, indent=1, default=str)
    results["path"] = path
  return results


def format_table(results: dict) -> str:
  rows = sorted(results["metrics"].items())
  width = max((len(k) for k, _ in rows), default=6)
  head = f"{results['workdir']} — step {results['checkpoint_step']} ({results['method']})"
  return "\n".join([head] + [f"  {k:<{width}}  {v:10.3f}" for k, v in rows])


def main(argv=None):
  """The `lmim-evaluate` command (python -m lmim.evaluate)."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from lmim import cli  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("workdir", None, "An lmim workdir (or a converted official checkpoint).")
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
  flags.DEFINE_bool("check", False, "Only list each evaluator's datasets and whether they are prepared.")
  cli.define_distributed_flags()
  flags.mark_flags_as_required(["workdir"])

  def run(cfg, path):
    cli.initialize_distributed()
    if flags.FLAGS.check:
      rows = cli.guard(lambda: preflight(cfg))
      print(format_preflight(rows))
      sys.exit(0 if all(r["ok"] for r in rows) else 1)
    console_logging()
    name = path.stem
    res = cli.guard(lambda: evaluate(cfg, flags.FLAGS.workdir, step=flags.FLAGS.step,
                                     results_name=f"{name}_{cfg.get('preset', 'custom')}"))
    print(format_table(res))
    print(f"results: {res.get('path')}")
  cli.run_app(run, default_config="configs/eval.py", argv=argv)


if __name__ == "__main__":
  main()
