"""The launch scripts, through their dry runs: the commands they would run, and what they refuse.

No gcloud, SLURM or network is needed: every script runs with a PATH whose gcloud, srun, sbatch and
scontrol fail loudly, so a dry run that tried to run one would fail its test.
"""
import os
import pathlib
import re
import shlex
import shutil
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_pod.sh"
SLURM = ROOT / "launch" / "slurm.sbatch"
LOCAL = ROOT / "launch" / "local.sh"
STUDY = ROOT / "launch" / "slurm_study.sbatch"
JAX_PIN = re.search(r"^jax==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M).group(1)
TRAIN = ["--config", "configs/lmim_vitb16_in1k.py", "--workdir", "gs://bucket/run 1", "--config.seed=3"]
POD = ["--name", "pod1", "--zone", "us-central2-b"]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  """The environment of every script: no SLURM variables, and tools that must never run."""
  bin_dir = tmp_path_factory.mktemp("bin")
  for tool in ("gcloud", "srun", "sbatch", "scontrol"):
    path = bin_dir / tool
    path.write_text(f"#!/bin/sh\necho 'test_launch: {tool} must not run' >&2\nexit 99\n")
    path.chmod(0o755)
  clean = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in ("DRY_RUN", "TMPDIR")}
  clean["PATH"] = f"{bin_dir}:{clean['PATH']}"
  return clean


def sh(script, *args, env, cwd=ROOT, **extra):
  return subprocess.run(["bash", str(script), *args], cwd=cwd, env={**env, **extra}, capture_output=True,
                        text=True, timeout=30, check=False)


def commands(result):
  """The printed commands, as argv lists (shell words), in order."""
  assert result.returncode == 0, result.stderr
  return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def remote(argv):
  """The command a `gcloud ... ssh --command=...` runs on the workers, as shell words."""
  command = [a for a in argv if a.startswith("--command=")]
  assert len(command) == 1, argv
  return shlex.split(command[0][len("--command="):])


def one_line_error(result):
  assert result.returncode == 2, (result.stdout, result.stderr)
  assert result.stdout == ""
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  return lines[0]


# tpu_pod.sh -----------------------------------------------------------------------------------

def test_every_dry_run_line_is_a_command(env):
  out = sh(TPU, "all", *POD, "--type", "v4-32", "--dry-run", "--", *TRAIN, env=env)
  assert out.returncode == 0, out.stderr
  assert out.stdout and all(line.startswith("+ ") for line in out.stdout.splitlines())


@pytest.mark.parametrize("spot", [False, True])
def test_tpu_create(env, spot):
  out = sh(TPU, "create", *POD, "--type", "v4-32", "--project", "proj", *(["--spot"] if spot else []),
           "--dry-run", env=env)
  (argv,) = commands(out)
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "pod1"]
  assert {"--zone=us-central2-b", "--project=proj", "--accelerator-type=v4-32",
          "--version=tpu-ubuntu2204-base"} <= set(argv)
  assert ("--spot" in argv) == spot


@pytest.mark.parametrize("tpu_type,version", [("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-16", "v2-alpha-tpuv5")])
def test_tpu_create_default_runtime_by_type(env, tpu_type, version):
  (argv,) = commands(sh(TPU, "create", *POD, "--type", tpu_type, "--dry-run", env=env))
  assert f"--version={version}" in argv
  (argv,) = commands(sh(TPU, "create", *POD, "--type", tpu_type, "--version", "mine", "--dry-run", env=env))
  assert "--version=mine" in argv


def test_tpu_create_queued_spot(env):
  out = sh(TPU, "create", *POD, "--type", "v5p-16", "--queued", "--spot", "--dry-run", env=env)
  create, describe = commands(out)
  assert create[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "pod1"]
  assert {"--node-id=pod1", "--zone=us-central2-b", "--accelerator-type=v5p-16",
          "--runtime-version=v2-alpha-tpuv5", "--spot"} <= set(create)
  assert describe[:6] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "pod1"]
  assert "tpu-vm" not in create


def test_tpu_copy_ships_head_to_every_worker(env):
  archive, scp, untar, cleanup = commands(sh(TPU, "copy", *POD, "--allow-dirty", "--dry-run", env=env))
  assert archive[:2] == ["git", "-C"] and archive[3:5] == ["archive", "--format=tar.gz"] and archive[-1] == "HEAD"
  tarball = archive[archive.index("-o") + 1]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and tarball in scp
  assert "pod1:lmim.tar.gz" in scp and "--worker=all" in scp
  assert untar[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in untar
  assert "tar" in remote(untar) and "~/lmim" in remote(untar)
  assert cleanup == ["rm", "-f", tarball]


def _git(repo, *args):
  subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args], cwd=repo, check=True,
                 capture_output=True, timeout=30)


@pytest.fixture()
def scratch_repo(tmp_path):
  """A committed git checkout holding the script and requirements.txt (the real repo is left alone)."""
  (tmp_path / "launch").mkdir()
  shutil.copy(TPU, tmp_path / "launch" / "tpu_pod.sh")
  shutil.copy(ROOT / "requirements.txt", tmp_path / "requirements.txt")
  _git(tmp_path, "init", "-q")
  _git(tmp_path, "add", ".")
  _git(tmp_path, "commit", "-q", "-m", "x")
  return tmp_path


def test_tpu_copy_refuses_a_dirty_tree(env, scratch_repo):
  script = scratch_repo / "launch" / "tpu_pod.sh"
  clean = sh(script, "copy", *POD, "--dry-run", env=env)
  assert clean.returncode == 0 and "uncommitted" not in clean.stderr
  with open(scratch_repo / "requirements.txt", "a", encoding="utf-8") as f:
    f.write("extra==1\n")
  refused = sh(script, "copy", *POD, env=env)  # a real run: stops before gcloud (which would exit 99)
  assert "uncommitted changes" in one_line_error(refused) and "--allow-dirty" in refused.stderr
  warned = sh(script, "copy", *POD, "--dry-run", env=env)
  assert warned.returncode == 0 and "warning" in warned.stderr and len(commands(warned)) == 4
  _git(scratch_repo, "checkout", "-q", "--", "requirements.txt")
  (scratch_repo / "lmim").mkdir()
  (scratch_repo / "lmim" / "new_module.py").write_text("")  # new code, not committed: not in the archive
  assert "uncommitted changes" in one_line_error(sh(script, "copy", *POD, env=env))
  assert sh(script, "copy", *POD, "--allow-dirty", "--dry-run", env=env).returncode == 0


def test_tpu_setup_installs_the_pinned_jax_tpu(env):
  (argv,) = commands(sh(TPU, "setup", *POD, "--dry-run", env=env))
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in argv
  words = remote(argv)
  assert JAX_PIN == "0.10.2"
  assert f"jax[tpu]=={JAX_PIN}" in words
  assert words[words.index("-f") + 1] == "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
  assert words[words.index("-r") + 1] == "requirements.txt" and ".venv/bin/python" in words


def test_tpu_preflight(env):
  (argv,) = commands(sh(TPU, "preflight", *POD, "--dry-run", "--", *TRAIN, env=env))
  assert "--worker=all" in argv
  words = remote(argv)
  assert "LMIM_TPU_POD=1" in words
  i = words.index("lmim.preflight")
  assert words[i - 1] == "-m" and words[i + 1:i + 3] == ["--workdir", "gs://bucket/run 1"]


def test_tpu_run_passes_the_train_args(env):
  (argv,) = commands(sh(TPU, "run", *POD, "--dry-run", "--", *TRAIN, env=env))
  assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod1"] and "--worker=all" in argv
  words = remote(argv)
  assert "LMIM_TPU_POD=1" in words and "nohup" in words and words[-1] == "&"
  i = words.index("lmim.train")
  assert words[i + 1:i + 1 + len(TRAIN)] == TRAIN
  assert words[i + 1 + len(TRAIN):i + 3 + len(TRAIN)] == [">>", "~/lmim/train.log"]


def test_tpu_logs_and_delete(env):
  (logs,) = commands(sh(TPU, "logs", *POD, "--dry-run", env=env))
  assert "--worker=0" in logs and "tail" in remote(logs) and "~/lmim/train.log" in remote(logs)
  (delete,) = commands(sh(TPU, "delete", *POD, "--dry-run", env=env))
  assert delete[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "pod1"] and "--quiet" in delete
  (delete,) = commands(sh(TPU, "delete", *POD, "--queued", "--dry-run", env=env))
  assert delete[:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "pod1"]
  assert {"--force", "--quiet", "--zone=us-central2-b"} <= set(delete)


def test_tpu_all_runs_every_step_in_order(env):
  out = sh(TPU, "all", *POD, "--type", "v4-32", "--queued", "--spot", "--allow-dirty", "--dry-run", "--", *TRAIN,
           env=env)
  argvs = commands(out)
  steps = [" ".join(a[:5]) for a in argvs]
  assert steps[:2] == ["gcloud compute tpus queued-resources create", "gcloud compute tpus queued-resources describe"]
  ssh = [remote(a) for a in argvs if a[3:5] == ["tpu-vm", "ssh"]]
  assert [("tar" in w, f"jax[tpu]=={JAX_PIN}" in w, "lmim.preflight" in w, "lmim.train" in w, "tail" in w)
          for w in ssh] == [tuple(i == j for j in range(5)) for i in range(5)]  # untar, setup, preflight, run, logs
  assert any(a[4] == "scp" for a in argvs)


def test_tpu_host_local_workdir_refused(env):
  train = ["--config", "c.py", "--workdir", "/home/me/run"]
  for sub in ("run", "all"):
    args = [sub, *POD, "--type", "v4-32", "--dry-run", "--", *train]
    assert "split checkpoints across machines" in one_line_error(sh(TPU, *args, env=env))
  (argv,) = commands(sh(TPU, "run", *POD, "--shared-fs", "--dry-run", "--", *train, env=env))
  assert "/home/me/run" in remote(argv)
  out = sh(TPU, "run", *POD, "--dry-run", "--", "--config", "c.py", "--workdir=gs://b/r", env=env)
  assert out.returncode == 0


@pytest.mark.parametrize("args,missing", [
    (["create", "--zone", "z", "--type", "v4-8"], "--name"),
    (["delete", "--name", "n"], "--zone"),
    (["create", "--name", "n", "--zone", "z"], "--type"),
    (["--name", "n", "--zone", "z"], "subcommand"),
    (["run", "--name", "n", "--zone", "z", "--", "--config", "c.py"], "--workdir"),
    (["copy", "--name", "n", "--zone", "z", "--bogus"], "--bogus"),
])
def test_tpu_usage_errors(env, args, missing):
  assert missing in one_line_error(sh(TPU, *args, "--dry-run", env=env))


# slurm.sbatch ---------------------------------------------------------------------------------

def test_slurm_dry_run(env):
  # An absolute path: a relative one resolves against the checkout, which may itself sit in /tmp.
  out = sh(SLURM, "--config", "configs/lmim_demo.py", "--workdir", "/shared/runs/slurm run", env=env, DRY_RUN="1")
  (srun,) = commands(out)
  assert srun == ["srun", "--kill-on-bad-exit=1", ".venv/bin/python", "-m", "lmim.train",
                  "--config", "configs/lmim_demo.py", "--workdir", "/shared/runs/slurm run"]
  for request in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=TERM@120", "--requeue",
                  "--open-mode=append", "--output=slurm-%j.out"):
    assert request in out.stdout


def test_slurm_one_process_per_node_sees_all_gpus(env):
  out = sh(SLURM, "--config", "c.py", "--workdir=/shared/r", env=env, DRY_RUN="1", SLURM_NTASKS_PER_NODE="1",
           SLURM_GPUS_ON_NODE="4")
  export, srun = commands(out)
  assert export == ["export", "JAX_LOCAL_DEVICE_IDS=0,1,2,3"] and srun[-1] == "--workdir=/shared/r"


@pytest.mark.parametrize("workdir", ["/tmp/run", "/dev/shm/x", "/scratch/local/me/run", "/tmp"])
def test_slurm_node_local_workdir_refused(env, workdir):
  assert "node-local" in one_line_error(sh(SLURM, "--config", "c.py", "--workdir", workdir, env=env, DRY_RUN="1"))


def test_slurm_tmpdir_workdir_refused(env):
  out = sh(SLURM, "--config", "c.py", "--workdir", "/local/job7/run", env=env, DRY_RUN="1", TMPDIR="/local/job7/")
  assert "node-local" in one_line_error(out)


def test_slurm_outside_slurm_needs_sbatch(env):
  assert "sbatch" in one_line_error(sh(SLURM, "--config", "c.py", "--workdir", "/shared/r", env=env))
  assert "--workdir" in one_line_error(sh(SLURM, "--config", "c.py", env=env, DRY_RUN="1"))


# local.sh -------------------------------------------------------------------------------------

def test_local_dry_run(env):
  out = sh(LOCAL, "--dry-run", "--processes", "3", "--devices", "2", "--", ".venv/bin/python", "-m", "lmim.train",
           "--workdir", "w", env=env)
  assert out.returncode == 0, out.stderr
  lines = out.stdout.splitlines()
  assert len(lines) == 3
  ports = set()
  for i, line in enumerate(lines):
    assert f"LMIM_PROCESS_ID={i} " in line and "JAX_NUM_CPU_DEVICES=2" in line and "LMIM_NUM_PROCESSES=3" in line
    assert ".venv/bin/python -m lmim.train --workdir w" in line
    ports.add(re.search(r"LMIM_COORDINATOR=127\.0\.0\.1:(\d+)", line).group(1))
  assert len(ports) == 1


@pytest.mark.parametrize("bad", ["0", "-1", "two"])
def test_local_bad_processes(env, bad):
  out = sh(LOCAL, "--dry-run", "--processes", bad, "--", "python", "-m", "lmim.train", env=env)
  assert "--processes" in one_line_error(out)


def test_slurm_study_array_task_runs_its_cell(env):
  (argv,) = commands(sh(STUDY, "--config", "configs/studies/laptop_ladder.py:data=mnist5k", "--workdir",
                        "/shared/studies/ladder", env=env, DRY_RUN="1", SLURM_ARRAY_TASK_ID="7"))
  assert argv == [".venv/bin/python", "-m", "lmim.study", "--config", "configs/studies/laptop_ladder.py:data=mnist5k",
                  "--workdir", "/shared/studies/ladder", "--cell", "7"]
  missing = sh(STUDY, "--config", "c.py", "--workdir", "/shared/w", env=env, DRY_RUN="1")
  assert missing.returncode == 2 and "SLURM_ARRAY_TASK_ID" in missing.stderr and "--array" in missing.stderr
