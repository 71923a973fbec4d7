"""Several processes on one machine, as on a pod: launch/local.sh starts them, JAX's distributed
runtime joins them over 127.0.0.1. Two processes x 4 devices must train exactly like one process
x 8 devices; the preflight refuses a workdir the hosts do not share; SIGTERM saves on every host."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT
from fault_worker import flat_params
from lmim import train
from lmim.checkpoint import Checkpointer
from test_faults import without_key_bias
from tiny import tiny_config

STEPS = 6
OVERRIDES = [f"--config.total_steps={STEPS}", "--config.log_every_steps=1", "--config.checkpoint.every_steps=3"]


def env():
  return dict(os.environ, PYTHONPATH=str(ROOT), JAX_COMPILATION_CACHE_DIR=jax.config.jax_compilation_cache_dir)


def local(workdir, *extra, processes=2, devices=4, **popen):
  cmd = ["bash", str(ROOT / "launch" / "local.sh"), "--processes", str(processes), "--devices", str(devices),
         "--logs", str(workdir) + "_logs", "--", sys.executable, "-m", "lmim.train",
         "--config", str(ROOT / "tests" / "tiny_cli_config.py"), "--workdir", str(workdir), *OVERRIDES, *extra]
  return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          start_new_session=True, **popen)


def losses(workdir) -> dict:
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def test_two_processes_train_like_one(tmp_path):
  cfg = tiny_config(**{"total_steps": STEPS, "log_every_steps": 1, "checkpoint.every_steps": 3})
  one = train.train(cfg, str(tmp_path / "one"))
  proc = local(tmp_path / "two")
  out = proc.communicate(timeout=600)[0]
  assert proc.returncode == 0, out[-4000:]
  assert "2 processes run the same code" in out  # the preflight ran
  a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([b[s] for s in sorted(b)], [a[s] for s in sorted(a)], rtol=1e-6)
  ck = Checkpointer(str(tmp_path / "two" / "checkpoints"), create=False)
  assert ck.restore_meta(STEPS)["process_count"] == 2
  setup = train.prepare(cfg)
  two = ck.restore(STEPS, {"params": train.abstract_items(setup)["params"]})["params"]
  ref = flat_params(one["state"])
  got = flat_params(type("S", (), {"params": two}))
  for k in ref:
    np.testing.assert_allclose(without_key_bias(k, got[k]), without_key_bias(k, ref[k]), atol=1e-6, err_msg=k)
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
      [sys.executable, "-m", "lmim.distributed", "--workdir", str(w)], cwd=ROOT,
      env=dict(env(), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2", LMIM_COORDINATOR=f"127.0.0.1:{port}",
               LMIM_NUM_PROCESSES="2", LMIM_PROCESS_ID=str(i)),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i, w in enumerate(workdirs)]
  return [(p.wait(timeout=120), *p.communicate()) for p in procs]


def _free_port():
  import socket  # pylint: disable=import-outside-toplevel
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_preflight_accepts_a_shared_workdir_and_refuses_host_local_ones(tmp_path):
  shared = tmp_path / "shared"
  (rc0, out0, err0), (rc1, _, err1) = _distributed_preflight([shared, shared], _free_port())
  assert (rc0, rc1) == (0, 0), err0[-2000:] + err1[-2000:]
  assert "preflight OK (explicit): 2 process(es), 4 devices" in out0 and f"workdir {shared} shared" in out0
  # Each "host" sees its own directory under the same kind of path: a host-local disk.
  results = _distributed_preflight([tmp_path / "host0" / "run", tmp_path / "host1" / "run"], _free_port())
  for rc, _, err in results:
    assert rc == 2, err[-2000:]
    line = next(l for l in err.splitlines() if l.startswith("lmim: error:"))
    assert "is not shared by all hosts: processes [1] cannot see what process 0 writes there" in line


def test_incomplete_multihost_settings_are_one_line(tmp_path):
  out = subprocess.run([sys.executable, "-m", "lmim.train", "--config", str(ROOT / "tests" / "tiny_cli_config.py"),
                        "--workdir", str(tmp_path), "--num_processes=2"], cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=120)
  assert out.returncode == 2
  assert out.stderr.strip().splitlines()[-1].startswith("lmim: error: multi-host settings are incomplete")
  assert not os.listdir(tmp_path)
