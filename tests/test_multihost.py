"""Several processes on one machine, as on a pod: launch/local.sh starts them, JAX's distributed
runtime joins them over 127.0.0.1. Two processes x 4 devices must train exactly like one process
x 8 devices; the preflight refuses a workdir the hosts do not share; SIGTERM saves on every host."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, free_port
from fault_worker import flat_params
from lmim import train
from lmim.checkpoint import Checkpointer
from test_faults import without_key_bias
from tiny import tiny_config

# Each test starts other processes (workers, hosts, study cells): `-m "not slow"` leaves them out.
pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]

STEPS = 6
OVERRIDES = [f"--config.total_steps={STEPS}", "--config.log_every_steps=1", "--config.checkpoint.every_steps=3"]


def env():
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)


def local(workdir, *extra, processes=2, devices=4, **popen):
  cmd = ["bash", str(ROOT / "launch" / "local.sh"), "--processes", str(processes), "--devices", str(devices),
         "--logs", str(workdir) + "_logs", "--", sys.executable, "-m", "lmim.train",
         "--config", str(ROOT / "tests" / "helpers" / "tiny_cli_config.py"), "--workdir", str(workdir), *OVERRIDES, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True, **popen)


def losses(workdir) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def config():
  return tiny_config(**{"total_steps": STEPS, "log_every_steps": 1, "checkpoint.every_steps": 3})


@pytest.fixture(scope="module")
def one(tmp_path_factory):
  """The reference: one process, 8 devices, uninterrupted."""
  wd = tmp_path_factory.mktemp("one")
  return wd, train.train(config(), str(wd))


def restored_params(workdir, step) -> dict:
  ck = Checkpointer(str(workdir / "checkpoints"), create=False)
  params = ck.restore(step, {"params": train.abstract_items(train.prepare(config()))["params"]})["params"]
  return ck.restore_meta(step), flat_params(params)


def assert_same_params(got: dict, ref: dict):
  for k in ref:
    np.testing.assert_allclose(without_key_bias(k, got[k]), without_key_bias(k, ref[k]), atol=1e-6, err_msg=k)


def test_two_processes_train_like_one(tmp_path, one):
  one_dir, one = one
  proc = local(tmp_path / "two")
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-4000:]
  assert "2 processes run the same code" in out  # the preflight ran
  a, b = losses(one_dir), losses(tmp_path / "two")
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
  meta, got = restored_params(tmp_path / "two", STEPS)
  assert meta["process_count"] == 2
  assert_same_params(got, flat_params(one["state"].params))
  # Only process 0 writes logs and metrics.
  assert not [f for f in os.listdir(tmp_path / "two") if f.startswith("metrics") and f != "metrics.jsonl"]


def test_sigterm_on_every_host_saves_one_step_and_exits_0(tmp_path):
  proc = local(tmp_path / "run", "--config.total_steps=400", "--config.checkpoint.every_steps=1000")
  seen, t0 = [], time.time()
  for line in proc.stdout:
    seen.append(line)
    if "step 3/400" in line or time.time() - t0 > 400:
      break
  os.killpg(proc.pid, signal.SIGTERM)  # as a preemption notice reaches every worker
  out = "".join(seen) + proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, out[-4000:]
  ck = Checkpointer(str(tmp_path / "run" / "checkpoints"), create=False)
  step = ck.latest_step()
  assert step is not None and 3 <= step < 400, out[-3000:]
  assert f"Preempted: saved step {step}" in out


def _distributed_preflight(workdirs, port):
  procs = [subprocess.Popen(
      [sys.executable, "-m", "lmim.preflight", "--workdir", str(w)], cwd=ROOT,
      env=dict(env(), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", LMIM_COORDINATOR=f"127.0.0.1:{port}",
               LMIM_NUM_PROCESSES="2", LMIM_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, w in enumerate(workdirs)]
  return [(p.wait(timeout=120), *p.communicate()) for p in procs]


def test_preflight_accepts_a_shared_workdir_and_refuses_host_local_ones(tmp_path):
  shared = tmp_path / "shared"
  (rc0, out0, err0), (rc1, _, err1) = _distributed_preflight([shared, shared], free_port())
  assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
  assert "preflight OK (explicit): 2 process(es), 4 devices" in out0 and f"workdir {shared} shared" in out0
  # Each "host" sees its own directory under the same kind of path: a host-local disk.
  results = _distributed_preflight([tmp_path / "host0" / "run", tmp_path / "host1" / "run"], free_port())
  for rc, _, err in results:
    assert rc == 2, err[-2000:]
    line = next(l for l in err.splitlines() if l.startswith("lmim: error:"))
    assert "is not shared by all hosts: processes [1] cannot see what process 0 writes there" in line


def test_incomplete_multihost_settings_are_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "lmim.train", "--config", str(ROOT / "tests" / "helpers" / "tiny_cli_config.py"),
                        "--workdir", str(tmp_path), "--num_processes=2"], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("lmim: error: multi-host settings are incomplete")
  assert not os.listdir(tmp_path)


def test_a_resume_with_another_process_count_continues_the_same_stream(tmp_path, one):
  """3 steps in one process, the rest in two: the checkpoint's global example index puts the
  2-process run on the very examples the 1-process run would have read next."""
  one_dir, one = one
  train.train(config(), str(tmp_path / "run"), stop_after_steps=3)
  proc = local(tmp_path / "run")
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-4000:]
  assert "Resumed from step 3 (data position 48)" in out
  a, b = losses(one_dir), losses(tmp_path / "run")
  np.testing.assert_allclose([b[s] for s in range(1, STEPS + 1)], [a[s] for s in range(1, STEPS + 1)], rtol=1e-6)
  meta, got = restored_params(tmp_path / "run", STEPS)
  assert meta["process_count"] == 2
  assert_same_params(got, flat_params(one["state"].params))


def test_preflight_refuses_hosts_running_different_code(tmp_path):
  """Process 1 runs from a second checkout whose lmim differs by one comment line."""
  other = tmp_path / "other_checkout"
  for folder in ("lmim", "configs"):
    shutil.copytree(ROOT / folder, other / folder, ignore=shutil.ignore_patterns("__pycache__"))
  with open(other / "lmim" / "__init__.py", "a", encoding="utf-8") as f:
    f.write("# a local edit on one host\n")
  port, shared = free_port(), tmp_path / "shared"
  procs = []
  for i, root in enumerate((ROOT, other)):
    procs.append(subprocess.Popen(
        [sys.executable, "-m", "lmim.preflight", "--workdir", str(shared)], cwd=root,
        env=dict(env(), PYTHONPATH=str(root), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
                 LMIM_COORDINATOR=f"127.0.0.1:{port}", LMIM_NUM_PROCESSES="2", LMIM_PROCESS_ID=str(i)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  for p in procs:
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2, err[-2000:]
    line = next(l for l in err.splitlines() if l.startswith("lmim: error:"))
    assert "hosts run different lmim code or package versions: processes [1] differ from process 0" in line


def test_two_processes_evaluate_like_one(tmp_path, one):
  """Each process reads its own contiguous share of a split, so a global batch interleaves the
  shares; features come back in example order, so few-shot draws and picture selections (which
  index rows by example) give what one process gives, as do NN and kNN."""
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from lmim import cli, evaluate  # pylint: disable=import-outside-toplevel
  one_dir, _ = one
  wd = tmp_path / "wd"
  shutil.copytree(one_dir / "checkpoints", wd / "checkpoints")
  spec = str(ROOT / "tests" / "helpers" / "multihost_eval_config.py")
  cfg, _ = cli.load_config(spec)
  ref = evaluate.evaluate(cfg, str(wd), results_name="one")["metrics"]
  pictures = {p.name: np.asarray(Image.open(p)) for p in (wd / "eval" / "pictures").glob("*.png")}
  assert len(pictures) == 3
  shutil.rmtree(wd / "eval" / "pictures")
  cmd = ["bash", str(ROOT / "launch" / "local.sh"), "--processes", "2", "--devices", "4", "--logs",
         str(tmp_path / "logs"), "--", sys.executable, "-m", "lmim.evaluate", "--workdir", str(wd), "--config", spec]
  run = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
  two = json.load(open(wd / "eval" / f"multihost_eval_config_custom_step{STEPS}.json", encoding="utf-8"))
  assert set(two["metrics"]) == set(ref)
  for k, v in ref.items():
    assert two["metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
  for name, picture in pictures.items():
    np.testing.assert_array_equal(np.asarray(Image.open(wd / "eval" / "pictures" / name)), picture, err_msg=name)
