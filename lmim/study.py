"""Studies: a grid of configs (cells × seeds) through the trainer and the evaluators, with a table
and plots. `lmim-study` (python -m lmim.study).

    lmim-study --config configs/studies/laptop_ladder.py:data=shapes10k --workdir workdirs/ladder
    lmim-study --config ... --workdir ... --list            # the cells' ids, one per line
    lmim-study --config ... --workdir ... --cell 3          # run one cell (a cluster array task)
    lmim-study --config ... --workdir ... --report          # table and plots from finished cells

A study is an ml_collections config (configs/studies/*.py):
  cells          the rows: each `cell(name, config_spec, **dotted_overrides)` — a config file (with
                 its arguments) and the fields it changes
  seeds          every cell runs once per seed (`config.seed`)
  overrides      (dotted field, value) pairs applied to every cell (after the config file, before
                 the cell's own; pairs because config field names cannot contain dots)
  curve_evals    eval entries added to every cell's training (`every_steps`): curves over training
  final_evals    eval entries run on every cell's final checkpoint (lmim.evaluate)
  pixel_baseline the final evals once more on raw pixels (feature='pixels'), as a row of the table
  table          the metrics of the table (names as `<eval>/<metric>`) and the bar chart
  curves         metrics plotted over training (eval metrics and training metrics such as sim_trg)

Each cell × seed runs in its own process in `<workdir>/cells/<cell>/seed<s>/` (a normal lmim
workdir: checkpoints, logs, metrics) and ends by writing `cell.json`; a cell with `cell.json` is
finished and never re-run, and an interrupted one resumes from its last checkpoint; a cell whose
training config equals an earlier cell's runs once, under the earlier name, and is reported under
both (`twins`). The same
cells run on one machine (the default: one after another) or as separate jobs (`--list` /
`--cell`, e.g. a SLURM array, launch/slurm_study.sbatch), then `--report` aggregates. Outputs:
`results.json` (every seed's metrics, means and stds), `table.md` (mean ± std over seeds) and
`curves.png`, `sims.png`, `final.png`.
"""
import dataclasses
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time

import ml_collections as mlc
import numpy as np

from lmim.errors import ConfigError, LmimError

log = logging.getLogger("lmim")
PIXELS = "pixels"


def cell(name: str, config: str, **overrides) -> mlc.ConfigDict:
  """One row of a study: a config file (with arguments) and the dotted fields it changes
  (`cell('vis6', 'configs/lmim_demo.py:steps=600', **{'views.num_vis': 6})`)."""
  return mlc.ConfigDict(dict(name=name, config=config, overrides=tuple(sorted(overrides.items()))))


@dataclasses.dataclass(frozen=True)
class Job:
  """One cell at one seed."""
  cell: str
  seed: int

  @property
  def id(self) -> str:
    return f"{self.cell}:{self.seed}"


def jobs(study) -> list[Job]:
  """Seed-major: an interrupted study has every cell at its first seed before any at its second.
  A cell that repeats an earlier cell's configuration (`twins`) is not a job: it reads its twin's."""
  repeats = twins(study)
  return [Job(c.name, int(s)) for s in study.seeds for c in study.cells if c.name not in repeats]


def twins(study) -> dict[str, str]:
  """Cell -> the first cell with exactly the same training config, for every cell that repeats
  one. The paper's tables share rows (the collapse table's EMA row is the loss table's MSE row,
  the loss table's PatchDisc row the masking table's first); training is deterministic, so a study
  runs each configuration once and reports it under every name."""
  first, out = {}, {}
  for c in study.cells:
    key = cell_config(study, c.name, 0).to_json_best_effort(sort_keys=True)
    out.update({c.name: first[key]} if key in first else {})
    first.setdefault(key, c.name)
  return out


def validate(study) -> None:
  """One-line errors for a study config, before anything runs."""
  names = [c.name for c in study.cells]
  if not names:
    raise ConfigError("cells", names, "at least one cell(name, config, **overrides)")
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ConfigError("cells", dup, "distinct cell names")
  bad = [n for n in names if not n or "/" in n or ":" in n or n == PIXELS]
  if bad:
    raise ConfigError("cells", bad, f"names without '/' or ':' (and not '{PIXELS}')")
  if not study.seeds:
    raise ConfigError("seeds", tuple(study.seeds), "at least one seed")
  for c in study.cells:
    cell_config(study, c.name, int(study.seeds[0]))  # every cell's config loads and takes its fields
  from lmim import evaluators  # pylint: disable=import-outside-toplevel
  for name, ev in (study.get("final_evals", {}) or {}).items():  # checked now, not after the training
    evaluators.check_fields(name, ev)


def _cell_def(study, name: str):
  for c in study.cells:
    if c.name == name:
      return c
  raise LmimError(f"--cell {name}: no such cell (cells: {', '.join(c.name for c in study.cells)})")


def cell_config(study, name: str, seed: int):
  """The training config of a cell at a seed: the file, the study's and the cell's overrides,
  the seed, and the study's curve evals."""
  from lmim import cli, config_lib  # pylint: disable=import-outside-toplevel
  c = _cell_def(study, name)
  config, _ = cli.load_config(c.config)
  try:
    config_lib.apply_dotted(config, dict(study.get("overrides", ()) or ()))
    config_lib.apply_dotted(config, dict(c.overrides))
  except (KeyError, AttributeError) as e:
    raise ConfigError(f"<study cell {name}>", str(e).strip("'\""), "a field of its config") from None
  config.seed = seed
  with config.unlocked():
    for eval_name, ev in (study.get("curve_evals", {}) or {}).items():
      config.evals[eval_name] = dict(ev)
  return config


def job_dir(workdir: str, job: Job) -> str:
  return os.path.join(workdir, "cells", job.cell, f"seed{job.seed}")


def _eval_config(evals, feature: str | None = None):
  """The final evals as an evaluation config; with `feature` (the pixel baseline) only the evals
  that have a feature field, set to it (collapse and pictures measure an encoder, not a feature)."""
  c = mlc.ConfigDict()
  c.mesh = dict(data=-1, fsdp=1)
  c.evals = mlc.ConfigDict()
  for name, ev in evals.items():
    ev = dict(ev)
    if feature is not None:
      if "feature" not in ev:
        continue
      ev["feature"] = feature
    c.evals[name] = ev
  return c


def run_job(study, workdir: str, job: Job) -> dict:
  """Train one cell at one seed (resuming if interrupted), run the final evals, write cell.json."""
  from lmim import evaluate, train  # pylint: disable=import-outside-toplevel
  wd = job_dir(workdir, job)
  done = os.path.join(wd, "cell.json")
  if os.path.exists(done):
    with open(done, encoding="utf-8") as f:
      return json.load(f)
  config = cell_config(study, job.cell, job.seed)
  t0 = time.perf_counter()
  train.train(config, wd)
  train_s = time.perf_counter() - t0
  metrics = {}
  if study.get("final_evals"):
    metrics = evaluate.evaluate(_eval_config(study.final_evals), wd, results_name="study")["metrics"]
  out = {"cell": job.cell, "seed": job.seed, "metrics": metrics, "train_seconds": train_s,
         "total_steps": int(config.total_steps) if config.get("total_steps") is not None else None}
  _write_json(done, out)
  return out


def run_pixels(study, workdir: str) -> dict | None:
  """The final evals on raw pixels (feature='pixels'), once: they do not depend on any model."""
  if not study.get("pixel_baseline") or not study.get("final_evals"):
    return None
  from lmim import evaluate  # pylint: disable=import-outside-toplevel
  path = os.path.join(workdir, "pixels.json")
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  first = next((j for j in jobs(study) if os.path.exists(os.path.join(job_dir(workdir, j), "cell.json"))), None)
  if first is None:
    return None
  metrics = evaluate.evaluate(_eval_config(study.final_evals, "pixels"), job_dir(workdir, first),
                              results_name="pixels")["metrics"]
  out = {"metrics": metrics}
  _write_json(path, out)
  return out


def _write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)  # a crash never leaves a half-written cell.json that reads as finished


###################################################################################################
# Aggregation: results.json, table.md, plots.
###################################################################################################


def _mean_std(values):
  v = np.asarray(values, np.float64)
  return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


TRAIN_SPEED = "train/images_per_sec"


def collect(study, workdir: str) -> dict:
  """Every finished cell's metrics (per seed, mean, std) and curves, and the pixel baseline."""
  from lmim.metrics_writer import read_jsonl  # pylint: disable=import-outside-toplevel
  out = {"study": study.get("name", ""), "seeds": list(study.seeds), "cells": {}, "pixels": None}
  repeats = twins(study)
  for c in study.cells:
    per_seed, curves = {}, {}
    for s in study.seeds:
      job = Job(repeats.get(c.name, c.name), int(s))
      path = os.path.join(job_dir(workdir, job), "cell.json")
      if not os.path.exists(path):
        continue
      with open(path, encoding="utf-8") as f:
        per_seed[str(s)] = json.load(f)["metrics"]
      rows = read_jsonl(os.path.join(job_dir(workdir, job), "metrics.jsonl"))
      speed = [r["images_per_sec"] for r in rows if isinstance(r.get("images_per_sec"), (int, float))]
      if speed:   # the trainer's logged rate, median over the run: wall-clock beside the probes
        per_seed[str(s)] = {**per_seed[str(s)], TRAIN_SPEED: float(np.median(speed))}
      for name in study.get("curves", ()):
        pts = [(r["step"], r[name]) for r in rows if name in r and isinstance(r[name], (int, float))]
        if pts:
          curves.setdefault(name, {})[str(s)] = pts
    summary = {}
    for metric in sorted({m for v in per_seed.values() for m in v}):
      vals = [v[metric] for v in per_seed.values() if metric in v]
      mean, std = _mean_std(vals)
      summary[metric] = {"mean": mean, "std": std, "n": len(vals)}
    out["cells"][c.name] = {"config": c.config, "overrides": {k: v for k, v in c.overrides},
                            "seeds": per_seed, "summary": summary, "curves": curves}
    if c.name in repeats:
      out["cells"][c.name]["same_as"] = repeats[c.name]
  pixels_path = os.path.join(workdir, "pixels.json")
  if os.path.exists(pixels_path):
    with open(pixels_path, encoding="utf-8") as f:
      out["pixels"] = json.load(f)["metrics"]
    out["pixels"].update(_pixel_curves(study, out["pixels"]))
  return out


def _pixel_curves(study, pixels: dict) -> dict:
  """The raw-pixel value of a curve eval that is a final eval's protocol run during training
  (same spec but `every_steps`), e.g. `nn_curve/top1` = the pixels' `nn/top1`: the dashed line
  beside the NN curves."""
  def spec(e):
    return {k: v for k, v in dict(e).items() if k != "every_steps"}
  out = {}
  for curve, ce in (study.get("curve_evals") or {}).items():
    for final, fe in (study.get("final_evals") or {}).items():
      if spec(ce) == spec(fe):
        out.update({f"{curve}/{k[len(final) + 1:]}": v for k, v in pixels.items() if k.startswith(final + "/")})
  return out


def table(study, results: dict) -> str:
  """Markdown: one row per cell (mean ± std over seeds, n), the raw-pixel row last."""
  metrics = list(study.table)
  head = "| cell | " + " | ".join(metrics) + " | seeds |"
  lines = [head, "|" + "---|" * (len(metrics) + 2)]
  for name, c in results["cells"].items():
    cells = []
    for m in metrics:
      s = c["summary"].get(m)
      digits = 1 if s is not None and abs(s["mean"]) >= 1.5 else 3
      cells.append("–" if s is None else f"{s['mean']:.{digits}f}" if s["n"] < 2  # one seed: no spread
                   else f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f}")
    n = max((s["n"] for s in c["summary"].values()), default=0)
    shown = f"{name} (= {c['same_as']})" if c.get("same_as") else name
    lines.append(f"| {shown} | " + " | ".join(cells) + f" | {n} |")
  if results.get("pixels"):
    px = results["pixels"]
    vals = ["–" if m not in px else f"{px[m]:.1f}" if abs(px[m]) >= 1.5 else f"{px[m]:.3f}" for m in metrics]
    lines.append("| raw pixels (same protocol) | " + " | ".join(vals) + " | – |")
  return "\n".join(lines) + "\n"


def cell_colours(results: dict) -> dict:
  """One colour per drawn cell, the same in every panel and file (a method without a metric, e.g.
  MAE's missing prediction Sim, must not shift the others' colours); tab20 past ten cells."""
  drawn = [n for n, c in results["cells"].items() if not c.get("same_as")]
  import matplotlib  # pylint: disable=import-outside-toplevel
  cmap = matplotlib.colormaps["tab10" if len(drawn) <= 10 else "tab20"]
  return {n: cmap(i % cmap.N) for i, n in enumerate(drawn)}


def curve_figure(plt, results: dict, names):
  """One panel per metric over training: mean over seeds, ± std shaded, each cell in its colour,
  a legend in every panel (panels hold different cells: not every method logs every metric)."""
  colours = cell_colours(results)
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.6), squeeze=False)
  for ax, name in zip(axes[0], names):
    for cell_name, c in results["cells"].items():
      runs = c["curves"].get(name)
      if not runs or c.get("same_as"):   # a twin's curve is its twin's line
        continue
      steps = sorted({s for pts in runs.values() for s, _ in pts})
      by_step = [[v for pts in runs.values() for s2, v in pts if s2 == s] for s in steps]
      mean = np.array([np.mean(v) for v in by_step])
      std = np.array([np.std(v) for v in by_step])
      ax.plot(steps, mean, label=cell_name, color=colours[cell_name])
      ax.fill_between(steps, mean - std, mean + std, alpha=0.15, color=colours[cell_name])
    if name in (results.get("pixels") or {}):
      ax.axhline(results["pixels"][name], color="k", linestyle="--", label="raw pixels")
    ax.set_title(name)
    ax.set_xlabel("step")
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=6, loc="best", ncol=1 + len(colours) // 9)
  fig.tight_layout()
  return fig


def plots(study, results: dict, workdir: str) -> list[str]:
  """curves.png (eval metrics over training), sims.png (training Sims), final.png (bar chart)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  written = []
  groups = {"curves.png": [m for m in study.get("curves", ()) if "/" in m],
            "sims.png": [m for m in study.get("curves", ()) if "/" not in m]}
  for filename, names in groups.items():
    if names:
      fig = curve_figure(plt, results, names)
      path = os.path.join(workdir, filename)
      fig.savefig(path, dpi=110)
      plt.close(fig)
      written.append(path)
  metrics = [m for m in study.table if any(m in c["summary"] for c in results["cells"].values())]
  if metrics:
    fig, axes = plt.subplots(1, len(metrics), figsize=(max(4, 0.55 * len(results["cells"]) + 1.5) * len(metrics) / 1.6, 3.8),
                             squeeze=False)
    names = list(results["cells"])
    for ax, m in zip(axes[0], metrics):
      means = [results["cells"][n]["summary"].get(m, {}).get("mean", math.nan) for n in names]
      stds = [results["cells"][n]["summary"].get(m, {}).get("std", 0.0) for n in names]
      ax.bar(range(len(names)), means, yerr=stds, capsize=2, color="tab:blue")
      if m in (results.get("pixels") or {}):
        ax.axhline(results["pixels"][m], color="k", linestyle="--", label="raw pixels")
        ax.legend(fontsize=7)
      ax.set_xticks(range(len(names)))
      ax.set_xticklabels(names, rotation=60, ha="right", fontsize=7)
      ax.set_title(m)
    fig.tight_layout()
    path = os.path.join(workdir, "final.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
  return written


def report(study, workdir: str) -> dict:
  results = collect(study, workdir)
  _write_json(os.path.join(workdir, "results.json"), results)
  with open(os.path.join(workdir, "table.md"), "w", encoding="utf-8") as f:
    f.write(f"# {study.get('name', 'study')}\n\n{study.get('description', '')}\n\n" + table(study, results))
  results["plots"] = plots(study, results, workdir)
  return results


###################################################################################################
# Running a whole study.
###################################################################################################


def _job_command(config_spec: str, overrides, workdir: str, job: Job) -> list[str]:
  args = [sys.executable, "-m", "lmim.study", "--config", config_spec, "--workdir", workdir, "--cell", job.id]
  return args + [f"--config.{k}={v}" for k, v in overrides]


def _job_env(workdir: str) -> dict:
  """The cells' processes share a persistent XLA cache: a cell's second and third seeds compile
  the same programs as its first (only the seed differs) and load them instead. A user's own
  JAX_COMPILATION_CACHE_DIR wins."""
  env = dict(os.environ)
  env.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.abspath(workdir), "xla_cache"))
  env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  return env


def run(study, workdir: str, *, config_spec: str, overrides=(), subprocesses: bool = True) -> dict:
  """Every unfinished cell × seed in turn (each in its own process unless `subprocesses=False`),
  the pixel baseline, then the report."""
  validate(study)
  os.makedirs(workdir, exist_ok=True)
  todo = [j for j in jobs(study) if not os.path.exists(os.path.join(job_dir(workdir, j), "cell.json"))]
  log.info("Study %s: %d cells x %d seeds, %d to run, in %s.", study.get("name", ""), len(study.cells),
           len(study.seeds), len(todo), workdir)
  for i, job in enumerate(todo):
    t0 = time.perf_counter()
    if subprocesses:
      cmd = _job_command(config_spec, overrides, workdir, job)
      logfile = os.path.join(job_dir(workdir, job), "study_job.log")
      os.makedirs(os.path.dirname(logfile), exist_ok=True)
      with open(logfile, "a", encoding="utf-8") as f:
        rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, check=False, env=_job_env(workdir)).returncode
      if rc != 0:
        raise LmimError(f"study cell {job.id} failed (exit {rc}); its log: {logfile}; rerun to retry it "
                        f"(finished cells are kept): {shlex.join(cmd)}")
    else:
      run_job(study, workdir, job)
    log.info("Cell %s done (%d/%d) in %.0f s.", job.id, i + 1, len(todo), time.perf_counter() - t0)
  run_pixels(study, workdir)
  return report(study, workdir)


def publish(study, workdir: str, dest: str, res: dict) -> None:
  """table.md, results.json, pixels.json and the plots, plus each finished cell's record
  (cell.json, metrics.jsonl: a few kB) under dest/cells/<cell>/seed<k>/, so that copying dest into
  a workdir resumes the study there without re-running what is published."""
  os.makedirs(dest, exist_ok=True)
  for path in [os.path.join(workdir, n) for n in ("table.md", "results.json", "pixels.json")] + list(
      res.get("plots", [])):
    if os.path.exists(path):
      shutil.copy(path, dest)
  for job in jobs(study):
    src = job_dir(workdir, job)
    if os.path.exists(os.path.join(src, "cell.json")):
      out = os.path.join(dest, os.path.relpath(src, workdir))
      os.makedirs(out, exist_ok=True)
      for name in ("cell.json", "metrics.jsonl"):
        if os.path.exists(os.path.join(src, name)):
          shutil.copy(os.path.join(src, name), out)


def main():
  """The `lmim-study` command."""
  from absl import flags  # pylint: disable=import-outside-toplevel
  from lmim import cli  # pylint: disable=import-outside-toplevel
  from lmim.metrics_writer import console_logging  # pylint: disable=import-outside-toplevel
  flags.DEFINE_string("workdir", None, "The study's folder (cells, results, table, plots).")
  flags.DEFINE_string("cell", None, "Run only this job, 'cell:seed' (or its index in --list).")
  flags.DEFINE_bool("list", False, "Print the jobs ('cell:seed'), one per line, and exit.")
  flags.DEFINE_bool("report", False, "Only aggregate the finished cells: results.json, table.md, plots.")
  flags.DEFINE_string("publish", None, "Also copy table.md and the plots into this folder (e.g. docs/results/<study>).")
  flags.mark_flags_as_required(["workdir"])

  def body(study, path):
    f = flags.FLAGS
    console_logging()
    config_spec, overrides, _ = cli.split_config_flags(sys.argv[1:])  # passed on to each cell's process
    del path
    cli.guard(lambda: validate(study))
    if f.list:
      print("\n".join(j.id for j in jobs(study)))
      return
    if f.cell is not None:
      all_jobs = jobs(study)
      job = all_jobs[int(f.cell)] if f.cell.isdigit() and int(f.cell) < len(all_jobs) else None
      if job is None:
        name, _, seed = f.cell.rpartition(":")
        repeats = twins(study)
        if name in repeats:
          cli.fail(f"--cell {f.cell}: {name} has the configuration of {repeats[name]} and runs as "
                   f"{repeats[name]}:{seed}")
        if not name or not seed.isdigit() or Job(name, int(seed)) not in all_jobs:
          cli.fail(f"--cell {f.cell}: not a job of this study (see --list: cell:seed or an index)")
        job = Job(name, int(seed))
      cli.guard(lambda: run_job(study, f.workdir, job))
      return
    if f.report:
      cli.guard(lambda: run_pixels(study, f.workdir))
      res = cli.guard(lambda: report(study, f.workdir))
    else:
      res = cli.guard(lambda: run(study, f.workdir, config_spec=config_spec, overrides=overrides))
    with open(os.path.join(f.workdir, "table.md"), encoding="utf-8") as fh:
      print(fh.read())
    print("plots: " + ", ".join(res.get("plots", [])))
    if f.publish:
      os.makedirs(f.publish, exist_ok=True)
      publish(study, f.workdir, f.publish, res)
      print(f"published to {f.publish}")
  cli.run_app(body)


if __name__ == "__main__":
  main()
