"""End to end through the command line: the main job, one-line errors, refusing a foreign workdir."""
import json
import os
import subprocess
import sys

import jax
import pytest

from conftest import ROOT
from lmim import train
from lmim.errors import CheckpointError, DataNotPreparedError
from tiny import tiny_config


def run(*args, timeout=600):
  env = dict(os.environ, PYTHONPATH=str(ROOT),
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def snapshot(path):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(path) for f in files}


def test_main_job_runs_and_reports_nn_before_and_after(tmp_path):
  """The README's command on a short schedule: trains, checkpoints, logs, reports NN twice."""
  wd = tmp_path / "demo"
  r = run("lmim.train", "--config", "configs/lmim_demo.py:steps=30", "--workdir", str(wd),
          "--config.log_every_steps=10", "--config.evals.nn.split=test[:300]")
  assert r.returncode == 0, r.stderr[-3000:]
  results = json.loads((wd / "results.json").read_text())
  assert 0 <= results["final"]["nn/top1"] <= 100 and 0 <= results["init"]["nn/top1_init"] <= 100
  rows = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [10, 20, 30]
  for key in ("loss", "sim_pred", "sim_vis", "sim_trg", "std_pred", "std_trg", "lr", "momentum",
              "grad_norm", "images_per_sec", "eta_sec"):
    assert key in train_rows[-1]
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(wd / "tensorboard"))
  log = (wd / "log.txt").read_text()
  assert "step 30/30" in log and "nn/top1" in log and "at initialisation" in log
  assert sorted(os.listdir(wd / "checkpoints")) == ["30"]
  # Running the finished job again resumes at the end and does no more training.
  r = run("lmim.train", "--config", "configs/lmim_demo.py:steps=30", "--workdir", str(wd),
          "--config.log_every_steps=10", "--config.evals.nn.split=test[:300]")
  assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("override,expect", [
    ("--config.views.num_vis=49", "config.views.num_vis=49 is invalid: must be in [1, 48]"),
    ("--config.input.data=imagenet2012", "tfds build imagenet2012 --file_format=array_record"),
])
def test_bad_input_on_the_command_line_is_one_line(tmp_path, override, expect):
  r = run("lmim.train", "--config", "configs/lmim_demo.py", "--workdir", str(tmp_path / "wd"),
          override, f"--config.input.data_dir={tmp_path / 'tfds'}")
  assert r.returncode == 2
  lines = [l for l in r.stderr.splitlines() if l.startswith("lmim: error:")]
  assert len(lines) == 1 and expect in lines[0], r.stderr[-2000:]
  assert "Traceback" not in r.stderr


def test_typo_in_an_override_fails_loudly(tmp_path):
  r = run("lmim.train", "--config", "configs/lmim_demo.py", "--workdir", str(tmp_path), "--config.optim.blrr=1")
  assert r.returncode != 0 and "blrr" in r.stderr


def test_foreign_workdir_is_refused_and_left_intact(tmp_path):
  wd = str(tmp_path / "wd")
  train.train(tiny_config(), wd, stop_after_steps=3)
  before = snapshot(wd + "/checkpoints")
  with pytest.raises(CheckpointError) as e:
    train.train(tiny_config(**{"model.width": 64, "optim.blr": 1e-3}), wd)
  msg = str(e.value)
  assert "refusing to resume" in msg and "model.width: checkpoint=32 now=64" in msg
  assert "optim.blr" in msg and "\n" not in msg
  assert snapshot(wd + "/checkpoints") == before


def test_unprepared_dataset_is_reported_before_anything_is_built(tmp_path):
  with pytest.raises(DataNotPreparedError, match=f"prepare it with: tfds build imagenet2012 .*--data_dir={tmp_path}"):
    train.prepare(tiny_config(**{"input.data": "imagenet2012", "input.data_dir": str(tmp_path)}))
