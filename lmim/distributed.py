"""Multi-host start-up: JAX's multi-controller runtime, started the right way on each platform,
and the checks that must pass on every host before a multi-host run may touch its workdir.

Every host runs the same command; each process then owns its local devices, loads its own slice
of every global batch (lmim.data: process `i` reads rows [i·B/P, (i+1)·B/P)) and the jitted step
sees one global array. `initialize` must run before anything asks JAX for devices. How the
coordinator is found, in order:

  explicit   --coordinator_address/--num_processes/--process_id, or the environment variables
             LMIM_COORDINATOR, LMIM_NUM_PROCESSES, LMIM_PROCESS_ID (launch/local.sh sets these)
  SLURM      SLURM_JOB_ID with more than one task (SLURM_NTASKS > 1): JAX reads the node list,
             task count and rank itself (launch/slurm.sbatch)
  TPU pod    LMIM_TPU_POD=1 (launch/tpu_pod.sh sets it) or TPU_WORKER_HOSTNAMES naming several
             workers: JAX asks the TPU metadata server
  otherwise  one process: nothing to initialise

`preflight(workdir)` then checks, across all processes, that every host runs the same lmim code
and package versions, and that the workdir is one shared location (a bucket or a shared
filesystem): a host-local path would silently split the checkpoint over machines.
"""
import hashlib
import importlib.metadata
import logging
import os
import pathlib
import secrets
import subprocess

import jax
import numpy as np

from lmim.errors import LmimError, WorkdirError

log = logging.getLogger("lmim")

ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID = "LMIM_COORDINATOR", "LMIM_NUM_PROCESSES", "LMIM_PROCESS_ID"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy", "ml-collections",
            "tensorflow-datasets")
ROOT = pathlib.Path(__file__).resolve().parents[1]
_SHARED_CHECK = ".lmim_shared_workdir_check"


class DistributedError(LmimError):
  """Hosts disagree (code, versions) or the multi-host settings are incomplete."""


def cluster(coordinator: str | None = None, num_processes: int | None = None,
            process_id: int | None = None, env=None) -> tuple[str, dict]:
  """-> (kind, jax.distributed.initialize kwargs): kind in {'explicit', 'slurm', 'tpu', 'single'}."""
  env = os.environ if env is None else env
  coordinator = coordinator or env.get(ENV_COORDINATOR)
  num_processes = num_processes if num_processes is not None else env.get(ENV_NUM_PROCESSES)
  process_id = process_id if process_id is not None else env.get(ENV_PROCESS_ID)
  given = [v is not None for v in (coordinator, num_processes, process_id)]
  if any(given):
    if not all(given):
      raise DistributedError("multi-host settings are incomplete: give all of coordinator address "
                             f"({ENV_COORDINATOR}), process count ({ENV_NUM_PROCESSES}) and process id "
                             f"({ENV_PROCESS_ID}), or none")
    n, i = int(num_processes), int(process_id)
    if n < 1 or not 0 <= i < n:
      raise DistributedError(f"process id {i} is not in [0, {n}) (process count {n})")
    return "explicit", dict(coordinator_address=coordinator, num_processes=n, process_id=i)
  if env.get("SLURM_JOB_ID") and int(env.get("SLURM_NTASKS", "1")) > 1:
    return "slurm", {}
  if env.get("LMIM_TPU_POD") == "1" or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
    return "tpu", {}
  return "single", {}


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str:
  """Start JAX's distributed runtime where the environment calls for it; returns the kind."""
  kind, kwargs = cluster(coordinator, num_processes, process_id)
  if kind != "single" and not jax.distributed.is_initialized():
    jax.distributed.initialize(**kwargs)
    log.info("Distributed runtime (%s): process %d of %d, %d local / %d global devices.", kind,
             jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return kind


# Preflight -------------------------------------------------------------------------------------

def software_fingerprint() -> dict:
  """What must be identical on every host: the lmim sources and configs, and package versions."""
  digest = hashlib.sha256()
  for folder in ("lmim", "configs"):
    for path in sorted((ROOT / folder).rglob("*.py")):
      digest.update(str(path.relative_to(ROOT)).encode())
      digest.update(path.read_bytes())
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = "absent"
  digest.update(repr(sorted(versions.items())).encode())
  return {"code_sha256": digest.hexdigest(), "git_commit": git_commit(), "versions": versions}


def git_commit() -> str:
  try:
    out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, timeout=10, check=False)
    return out.stdout.strip() or "unknown"
  except (OSError, subprocess.SubprocessError):
    return "unknown"


def _allgather_ints(values) -> np.ndarray:
  """(P, n) int64: every process's `values`."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(np.asarray(values, np.int64)))


def check_same_software(fp: dict) -> None:
  """Every process runs identical lmim code and package versions (`fp` = this process's
  software_fingerprint()), or all raise the same error."""
  mine = [int(fp["code_sha256"][i:i + 15], 16) for i in range(0, 60, 15)]
  everyone = _allgather_ints(mine).reshape(jax.process_count(), -1)
  differ = [p for p in range(len(everyone)) if not np.array_equal(everyone[p], everyone[0])]
  if differ:
    raise DistributedError(
        f"hosts run different lmim code or package versions: processes {differ} differ from process 0 "
        f"(this is process {jax.process_index()}: commit {fp['git_commit']}, "
        f"jax {fp['versions']['jax']}, flax {fp['versions']['flax']}); copy the same checkout and "
        "install requirements.txt on every host")


def check_shared_workdir(workdir: str) -> None:
  """Process 0 writes a random token in the workdir; every process must read it back.

  A host-local path (/tmp/run, a local SSD) passes on one host and fails on the others, which
  is exactly the run that would otherwise write half of each checkpoint to each machine.
  """
  from etils import epath  # pylint: disable=import-outside-toplevel
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  token = np.frombuffer(secrets.token_bytes(16), np.int64) if jax.process_index() == 0 else np.zeros(2, np.int64)
  token = np.asarray(multihost_utils.broadcast_one_to_all(token))
  path = epath.Path(workdir) / _SHARED_CHECK
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token.tobytes().hex())
  multihost_utils.sync_global_devices("lmim_shared_workdir_written")
  try:
    seen = path.read_text().strip() == token.tobytes().hex()
  except OSError:
    seen = False
  flags = _allgather_ints([int(seen)]).ravel()
  multihost_utils.sync_global_devices("lmim_shared_workdir_read")
  if jax.process_index() == 0:
    path.unlink(missing_ok=True)
  blind = [p for p, ok in enumerate(flags) if not ok]
  if blind:
    raise WorkdirError(f"workdir {workdir} is not shared by all hosts: processes {blind} cannot see what "
                       "process 0 writes there (a host-local path?); use a bucket (gs://...) or a "
                       "filesystem mounted on every host")


def preflight(workdir: str, fp: dict | None = None) -> None:
  """The multi-host checks (no-ops in a single process); every process must call this."""
  if jax.process_count() == 1:
    return
  fp = fp or software_fingerprint()
  check_same_software(fp)
  check_shared_workdir(workdir)
  log.info("Preflight: %d processes run the same code (%s) and share %s.", jax.process_count(),
           fp["code_sha256"][:12], workdir)
