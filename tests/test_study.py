"""The studies driver: a 2-cell × 2-seed study of a few steps runs, writes its table and plots,
resumes without re-running finished cells, and runs one cell as a separate job."""
import json
import os
import shutil
import subprocess
import sys

import jax
import pytest

from conftest import ROOT
from lmim import cli, study
from lmim.errors import ConfigError

# Each test starts other processes (workers, hosts, study cells): `-m "not slow"` leaves them out.
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

SPEC = str(ROOT / "tests" / "helpers" / "tiny_study.py")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("study"))
  cfg, _ = cli.load_config(SPEC)
  res = study.run(cfg, wd, config_spec=SPEC, subprocesses=False)
  return cfg, wd, res


def test_a_study_runs_every_cell_and_seed_and_writes_table_and_plots(finished):
  cfg, wd, res = finished
  assert sorted(res["cells"]) == ["vis10", "vis20"]
  for name in ("vis10", "vis20"):
    seeds = res["cells"][name]["seeds"]
    assert sorted(seeds) == ["0", "1"] and all("nn/top1" in m for m in seeds.values())
    s = res["cells"][name]["summary"]["nn/top1"]
    vals = [m["nn/top1"] for m in seeds.values()]
    assert s["n"] == 2 and s["mean"] == pytest.approx(sum(vals) / 2)
    assert set(res["cells"][name]["curves"]) == {"nn_curve/top1", "sim_trg"}
    assert res["cells"][name]["summary"][study.TRAIN_SPEED]["n"] == 2   # the wall-clock side, per seed
    assert [p[0] for p in res["cells"][name]["curves"]["nn_curve/top1"]["0"]] == [2, 4]  # every 2 of 4 steps
  # The two cells really differ in the field they name, and the seed reaches the trainer.
  a = json.load(open(os.path.join(wd, "cells", "vis20", "seed1", "config.json"), encoding="utf-8"))["resolved"]
  assert a["views"]["num_vis"] == 20 and a["seed"] == 1 and a["total_steps"] == 4
  assert res["pixels"] is not None and "nn/top1" in res["pixels"]
  assert not any(k.startswith("collapse/") for k in res["pixels"])  # an encoder metric, not a feature's
  # The NN curve is the final NN's protocol during training: its dashed pixel line is that value.
  assert res["pixels"]["nn_curve/top1"] == res["pixels"]["nn/top1"]
  table = open(os.path.join(wd, "table.md"), encoding="utf-8").read()
  assert "| vis10 |" in table and "| vis20 |" in table and "±" in table and "raw pixels" in table
  for png in ("curves.png", "sims.png", "final.png"):
    path = os.path.join(wd, png)
    assert os.path.getsize(path) > 5000 and open(path, "rb").read(4) == b"\x89PNG"


def test_a_rerun_does_not_rerun_finished_cells(finished):
  cfg, wd, _ = finished
  stamps = {j.id: os.stat(os.path.join(study.job_dir(wd, j), "cell.json")).st_mtime_ns for j in study.jobs(cfg)}
  logs = {j.id: os.path.getsize(os.path.join(study.job_dir(wd, j), "log.txt")) for j in study.jobs(cfg)}
  study.run(cfg, wd, config_spec=SPEC, subprocesses=False)
  for j in study.jobs(cfg):
    assert os.stat(os.path.join(study.job_dir(wd, j), "cell.json")).st_mtime_ns == stamps[j.id]
    assert os.path.getsize(os.path.join(study.job_dir(wd, j), "log.txt")) == logs[j.id]  # nothing trained


def test_an_interrupted_cell_resumes_from_its_checkpoint(finished, tmp_path):
  cfg, _, _ = finished
  job = study.Job("vis10", 0)
  wd = str(tmp_path)
  from lmim import train  # pylint: disable=import-outside-toplevel
  train.train(study.cell_config(cfg, "vis10", 0), study.job_dir(wd, job), stop_after_steps=2)  # "killed" at 2
  out = study.run_job(cfg, wd, job)
  log = open(os.path.join(study.job_dir(wd, job), "log.txt"), encoding="utf-8").read()
  assert "Resumed from step 2" in log and out["total_steps"] == 4


def test_the_command_lists_jobs_and_runs_one_as_a_separate_process(finished, tmp_path):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)
  listed = subprocess.run([sys.executable, "-m", "lmim.study", "--config", SPEC, "--workdir", str(tmp_path), "--list"],
                          capture_output=True, text=True, env=env, timeout=300)
  assert listed.returncode == 0 and listed.stdout.split() == ["vis10:0", "vis20:0", "vis10:1", "vis20:1"]
  one = subprocess.run([sys.executable, "-m", "lmim.study", "--config", SPEC, "--workdir", str(tmp_path), "--cell", "1"],
                       capture_output=True, text=True, env=env, timeout=600)
  assert one.returncode == 0, one.stderr[-2000:]
  assert os.path.exists(os.path.join(tmp_path, "cells", "vis20", "seed0", "cell.json"))
  assert not os.path.exists(os.path.join(tmp_path, "cells", "vis10"))
  bad = subprocess.run([sys.executable, "-m", "lmim.study", "--config", SPEC, "--workdir", str(tmp_path), "--cell", "vis99:0"],
                       capture_output=True, text=True, env=env, timeout=300)
  assert bad.returncode == 2 and "not a job of this study" in bad.stderr


def test_bad_studies_are_one_line():
  cfg, _ = cli.load_config(SPEC)
  with cfg.unlocked():
    cfg.cells = [cfg.cells[0], cfg.cells[0]]
  with pytest.raises(ConfigError, match="distinct cell names"):
    study.validate(cfg)
  cfg, _ = cli.load_config(SPEC)
  with cfg.unlocked():
    cfg.cells = [study.cell("x", "configs/lmim_demo.py", **{"views.num_viz": 3})]
  with pytest.raises(ConfigError, match="study cell x"):
    study.validate(cfg)
  # A final eval's field is checked before any cell trains, not when the first cell ends.
  cfg, _ = cli.load_config(SPEC)
  first = next(iter(cfg.final_evals))
  with cfg.unlocked():
    cfg.final_evals[first].encoder = "target"
  with pytest.raises(ConfigError, match=f"evals.{first}.encoder"):
    study.validate(cfg)


def test_a_published_study_resumes_elsewhere_without_rerunning(finished, tmp_path):
  cfg, wd, res = finished
  dest = tmp_path / "published"
  study.publish(cfg, wd, str(dest), res)
  assert {p.name for p in dest.iterdir()} >= {"table.md", "results.json", "cells"}
  elsewhere = tmp_path / "elsewhere"
  shutil.copytree(dest, elsewhere)
  again = study.run(cfg, str(elsewhere), config_spec=SPEC, subprocesses=False)  # nothing left to train
  assert not list(elsewhere.glob("cells/*/*/log.txt"))
  assert again["cells"]["vis10"]["summary"] == res["cells"]["vis10"]["summary"]
  assert again["cells"]["vis20"]["curves"] == res["cells"]["vis20"]["curves"]


def test_the_table_gives_a_spread_only_where_there_are_two_seeds_or_more():
  cfg, _ = cli.load_config(SPEC)
  res = {"cells": {"vis10": {"summary": {"nn/top1": {"mean": 40.0, "std": 2.0, "n": 3}}},
                   "vis20": {"summary": {"nn/top1": {"mean": 41.0, "std": 0.0, "n": 1}}}},
         "pixels": {"nn/top1": 93.1}}
  rows = study.table(cfg, res).splitlines()
  assert "| vis10 | 40.0 ± 2.0 | 3 |" in rows and "| vis20 | 41.0 | 1 |" in rows
  assert "| raw pixels (same protocol) | 93.1 | – |" in rows


def test_a_cell_that_repeats_another_runs_once_and_is_reported_under_both(tmp_path):
  """`again` spells vis10's configuration differently (its default visible count given
  explicitly): it is not a job, and the report shows vis10's runs under both names."""
  cfg, _ = cli.load_config(SPEC)
  with cfg.unlocked():
    cfg.cells = list(cfg.cells) + [study.cell("again", "configs/lmim_demo.py", **{"views.num_vis": 10})]
  assert study.twins(cfg) == {"again": "vis10"}
  assert [j.id for j in study.jobs(cfg)] == ["vis10:0", "vis20:0", "vis10:1", "vis20:1"]
  for j in study.jobs(cfg):
    d = tmp_path / "cells" / j.cell / f"seed{j.seed}"
    d.mkdir(parents=True)
    (d / "cell.json").write_text(json.dumps({"metrics": {"nn/top1": 10.0 * j.seed + len(j.cell)}}))
    (d / "metrics.jsonl").write_text("")
  res = study.collect(cfg, str(tmp_path))
  assert res["cells"]["again"]["seeds"] == res["cells"]["vis10"]["seeds"] == {"0": {"nn/top1": 5.0},
                                                                              "1": {"nn/top1": 15.0}}
  assert res["cells"]["again"]["same_as"] == "vis10" and "same_as" not in res["cells"]["vis20"]
  assert "| again (= vis10) | 10.0 ± 7.1 | 2 |" in study.table(cfg, res).splitlines()


def test_a_cell_keeps_its_colour_in_every_panel_and_every_panel_has_a_legend():
  """MAE logs no prediction Sim: in sims.png the cells after it must not change colour between
  the target-Sim and prediction-Sim panels (they did when each panel cycled colours itself)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  both = {"sim_trg": {"0": [[1, 0.9], [2, 0.8]]}, "sim_pred": {"0": [[1, 0.7], [2, 0.6]]}}
  res = {"cells": {"mae": {"curves": {"sim_trg": {"0": [[1, 0.5], [2, 0.5]]}}},
                   "latent_mim": {"curves": both}, "copy": {"curves": both, "same_as": "latent_mim"},
                   "pcae": {"curves": both}}}
  fig = study.curve_figure(plt, res, ["sim_trg", "sim_pred"])
  colour = [{ln.get_label(): ln.get_color() for ln in ax.get_lines()} for ax in fig.axes]
  assert set(colour[0]) == {"mae", "latent_mim", "pcae"} and set(colour[1]) == {"latent_mim", "pcae"}
  assert all(colour[0][n] == colour[1][n] for n in ("latent_mim", "pcae"))
  assert len(set(colour[0].values())) == 3
  assert all(ax.get_legend() is not None for ax in fig.axes)
  plt.close(fig)
