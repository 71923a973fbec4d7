"""End to end through the command line: the main job, one-line errors, refusing a foreign workdir."""
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest

from conftest import ROOT
from lmim import cli, train
from lmim.errors import CheckpointError, DataNotPreparedError, LmimError
from tiny import tiny_config


def run(*args, timeout=600, **env_vars):
  env = dict(os.environ, PYTHONPATH=str(ROOT),
             JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5", **env_vars)
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def snapshot(path):
  return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns
          for d, _, files in os.walk(path) for f in files}


@pytest.mark.slow
def test_main_job_runs_and_reports_nn_before_and_after(tmp_path):
  """The README's command on a short schedule, on a fresh machine (the embedded data is prepared
  first): trains, checkpoints, logs, reports NN twice, and prints no warning at all."""
  wd = tmp_path / "demo"
  r = run("lmim.train", "--config", "configs/lmim_demo.py:steps=30", "--workdir", str(wd),
          "--config.log_every_steps=10", "--config.evals.nn.split=test[:300]",
          "--config.evals.nn_pixels.split=test[:300]", LMIM_DATA_DIR=str(tmp_path / "data"))
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Preparing the embedded dataset mnist5k" in r.stderr
  warnings = [l for l in r.stderr.splitlines() if re.match(r"(W\d{4} |\d\d:\d\d:\d\d W |WARNING)", l)
              or "Downloading" in l or "Traceback" in l]
  assert not warnings, warnings
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
  assert "step 30/30" in log and "nn/top1" in log and "at initialisation" in log and "raw pixels" in log
  assert set(results["pixels"]) == {"nn/top1"} and "nn_pixels/top1" not in results["final"]
  assert sorted(os.listdir(wd / "checkpoints")) == ["30"]
  # Running the finished job again resumes at the end and does no more training.
  r = run("lmim.train", "--config", "configs/lmim_demo.py:steps=30", "--workdir", str(wd),
          "--config.log_every_steps=10", "--config.evals.nn.split=test[:300]",
          "--config.evals.nn_pixels.split=test[:300]")
  assert r.returncode == 0, r.stderr[-3000:]


def one_error_line(r) -> str:
  """The run failed with exactly one `lmim: error:` line and nothing else of note on stderr."""
  assert r.returncode == 2, r.stderr[-3000:]
  lines = [l for l in r.stderr.splitlines() if l.strip()]
  errors = [l for l in lines if l.startswith("lmim: error:")]
  assert len(errors) == 1 and "Traceback" not in r.stderr and "FATAL" not in r.stderr, r.stderr[-3000:]
  return errors[0]


@pytest.mark.parametrize("config,override,expect", [
    ("configs/lmim_demo.py", "--config.views.num_vis=49", "config.views.num_vis=49 is invalid: must be in [1, 48]"),
    ("configs/lmim_demo.py", "--config.input.data=imagenet2012", "lmim-prepare imagenet2012"),
    ("configs/lmim_demo.py:stepz=3", None, "config argument stepz='3' is invalid: did you mean 'steps'?"),
    ("configs/lmim_demo.py", "--config.optim.blrr=1e-3",
     "config.optim.blrr='1e-3' is invalid: no such field; did you mean config.optim.blr?"),
])
@pytest.mark.slow
def test_bad_input_on_the_command_line_is_one_line_and_creates_nothing(tmp_path, config, override, expect):
  wd = tmp_path / "wd"
  r = run("lmim.train", "--config", config, "--workdir", str(wd), f"--config.input.data_dir={tmp_path / 'tfds'}",
          *filter(None, [override]))
  assert expect in one_error_line(r)
  assert not wd.exists()  # a rejected run leaves no workdir behind


def test_bad_evaluation_preset_is_one_line(tmp_path):
  r = run("lmim.evaluate", "--config", "configs/eval.py:preset=foo", "--workdir", str(tmp_path))
  assert "config argument preset='foo' is invalid: one of all, collapse, demo" in one_error_line(r)


@pytest.mark.parametrize("spec,overrides,expect", [
    ("configs/lmim_demo.py:steps=abc", [], "config argument steps='abc' is invalid: an integer"),
    ("configs/lmim_demo.py:steps", [], "config argument steps=True is invalid: needs a value: steps=<an integer>"),
    ("configs/lmim_ablations.py:row=nope", [], "config argument row='nope' is invalid: one of dec_cross_mlp"),
    ("configs/pcae_vitb16_in1k.py:drop_case=7", [], "config argument drop_case=7 is invalid: one of 0, 1, 2, 3"),
    ("configs/eval.py:preset=demo,encoder=target", [], "config argument encoder='target' is invalid: one of ema, online"),
    ("configs/eval.py:preset=collapse,feature=pixels", [], "config argument feature='pixels' is invalid: a preset with a feature field"),
    ("configs/nope.py", [], "--config configs/nope.py: no such config file"),
    ("configs/lmim_demo.py", [("batch_size", "abc")], "config.batch_size='abc' is invalid: an integer"),
    ("configs/lmim_demo.py", [("batch_size", "12.5")], "config.batch_size='12.5' is invalid: an integer"),
    ("configs/lmim_demo.py", [("input.flip", "maybe")], "config.input.flip='maybe' is invalid: true or false"),
    ("configs/lmim_demo.py", [("input.mean", "abc")], "config.input.mean='abc' is invalid: a tuple"),
    ("configs/lmim_demo.py", [("optim", "3")], "config.optim='3' is invalid: a group of fields"),
    ("configs/lmim_demo.py", [("optim.blr.x", "3")], "config.optim.blr.x='3' is invalid: config.optim.blr is a value"),
    ("configs/lmim_demo.py", [("modle.width", "3")], "no such field; did you mean config.model?"),
    ("configs/lmim_demo.py", [("batch_size", "None")], "config.batch_size='None' is invalid: cannot be None"),
])
def test_config_arguments_and_overrides_fail_in_one_line(spec, overrides, expect):
  with pytest.raises(LmimError) as e:
    cli.load_config(spec, overrides)
  assert expect in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_overrides_take_the_field_type():
  c, path = cli.load_config("lmim_demo:steps=7", [
      ("optim.blr", "1e-3"), ("batch_size", "64"), ("input.flip", "false"), ("input.mean", "(0.5,)"),
      ("optim.lr", "0.01"), ("optim.lr", "None"), ("input.data_dir", "/x/y"), ("model.width", "64"),
      ("evals.nn.split", "test[:300]"), ("input.std", "0.25")])
  assert path == ROOT / "configs" / "lmim_demo.py" and c.total_steps == 7
  assert (c.optim.blr, c.batch_size, c.input.flip, c.input.mean, c.optim.lr) == (1e-3, 64, False, (0.5,), None)
  assert (c.input.data_dir, c.model.width, c.evals.nn.split, c.input.std) == ("/x/y", 64, "test[:300]", (0.25,))


def test_config_flags_are_read_in_every_form():
  spec, overrides, rest = cli.split_config_flags([
      "--config", "c.py:a=1", "--config.x.y=1", "--config.z", "2", "--config.flag", "--noconfig.other",
      "--workdir", "w", "--config.mesh.data", "-1"])
  assert spec == "c.py:a=1" and rest == ["--workdir", "w"]
  assert overrides == [("x.y", "1"), ("z", "2"), ("flag", "true"), ("other", "false"), ("mesh.data", "-1")]
  assert cli.split_config_flags(["--config=c.py"])[0] == "c.py"


def test_commands_run_from_any_directory(tmp_path):
  """Installed (pip install -e .), the commands find configs/ in the checkout from anywhere."""
  exe = pathlib.Path(sys.executable).parent / "lmim-train"
  if not exe.exists():
    pytest.fail(f"{exe} is missing: lmim is not pip-installed here (bash launch/setup.sh installs it)")
  r = subprocess.run([str(exe), "--config", "configs/lmim_demo.py:steps=abc", "--workdir", "wd"], cwd=tmp_path,
                     capture_output=True, text=True, timeout=300)
  assert "config argument steps='abc' is invalid" in one_error_line(r)


@pytest.mark.slow
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
  with pytest.raises(DataNotPreparedError, match=f"prepare it with: lmim-prepare imagenet2012 .*--data_dir={tmp_path}"):
    train.prepare(tiny_config(**{"input.data": "imagenet2012", "input.data_dir": str(tmp_path)}))
