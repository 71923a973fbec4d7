"""The multi-host preflight alone, on every host (launch scripts run it before training): the
same code and software everywhere and one shared workdir (lmim.distributed.preflight).

    python -m lmim.preflight --workdir DIR [--coordinator_address host:port --num_processes N --process_id I]
"""
import jax
from absl import app, flags

from lmim import cli, distributed


def main(argv=None):
  """lmim-preflight / python -m lmim.preflight --workdir DIR [--coordinator_address ...]."""
  flags.DEFINE_string("workdir", None, "The run's workdir (must be shared by all hosts).")
  cli.define_distributed_flags()
  flags.mark_flags_as_required(["workdir"])

  def run(_):
    kind = cli.initialize_distributed()
    fp = distributed.software_fingerprint()
    cli.guard(lambda: distributed.preflight(flags.FLAGS.workdir, fp))
    if jax.process_index() == 0:
      print(f"preflight OK ({kind}): {jax.process_count()} process(es), {jax.device_count()} devices, "
            f"code {fp['code_sha256'][:12]} (commit {fp['git_commit']}), jax {fp['versions']['jax']}, "
            f"workdir {flags.FLAGS.workdir} shared")
  app.run(run, argv)


if __name__ == "__main__":
  main()
