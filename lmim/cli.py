"""Command-line plumbing shared by the entry points (absl flags + ml_collections configs).

`--config path.py:arg` loads `get_config(arg)` from a config file and locks it, so a dotted
override with a typo (`--config.optim.blrr=1e-3`) is an error rather than a silent no-op.
Errors meant for people (lmim.errors.LmimError) print as one line and exit with status 2.
"""
import sys

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

from lmim.errors import LmimError


def _quiet_libraries():
  """TFDS logs every dataset-info read at INFO through absl and draws progress bars."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()


def guard(fn):
  _quiet_libraries()
  try:
    return fn()
  except LmimError as e:
    print(f"lmim: error: {e}", file=sys.stderr)
    sys.exit(2)


def define_distributed_flags():
  """Explicit multi-host settings (else the environment decides; see lmim.distributed)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
  flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def initialize_distributed():
  from lmim import distributed  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  return guard(lambda: distributed.initialize(f.coordinator_address, f.num_processes, f.process_id))


def main_train(train_fn):
  """python -m lmim.train --config configs/x.py[:arg] --workdir DIR [--config.a.b=v ...]

  Exits 0 when training ends or is preempted (after saving), 2 on bad input (one line).
  """
  config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
  define_distributed_flags()
  flags.mark_flags_as_required(["config", "workdir"])

  def main(argv):
    del argv
    initialize_distributed()  # before anything asks JAX for devices
    guard(lambda: train_fn(flags.FLAGS.config, flags.FLAGS.workdir))
  app.run(main)


def main_benchmark(benchmark_fn, format_fn):
  """python -m lmim.benchmark --config configs/x.py[:arg] [--steps N] [--json]"""
  config_flags.DEFINE_config_file("config", None, "Config file (get_config(arg)).", lock_config=True)
  flags.DEFINE_integer("steps", 10, "Timed steps (after 2 warmup steps).")
  flags.DEFINE_bool("json", False, "Print the result as JSON.")
  flags.mark_flags_as_required(["config"])

  def main(argv):
    del argv
    import json  # pylint: disable=import-outside-toplevel
    result = guard(lambda: benchmark_fn(flags.FLAGS.config, steps=flags.FLAGS.steps))
    print(json.dumps(result) if flags.FLAGS.json else format_fn(result))
  app.run(main)


def main_convert(convert_fn):
  """python -m lmim.convert --config configs/x.py --checkpoint official.pth --workdir DIR"""
  config_flags.DEFINE_config_file("config", None, "Config of the official model's architecture.",
                                  lock_config=True)
  flags.DEFINE_string("checkpoint", None, "Official state dict: .pth (needs torch) or .npz.")
  flags.DEFINE_string("workdir", None, "Empty directory to write the lmim checkpoint into.")
  flags.DEFINE_bool("encoder_only", False, "The checkpoint holds only the encoder (e.g. MAE's "
                    "mae_pretrain_vit_*.pth): fill exactly the encoder.")
  flags.mark_flags_as_required(["config", "checkpoint", "workdir"])

  def main(argv):
    del argv
    out = guard(lambda: convert_fn(flags.FLAGS.config, flags.FLAGS.checkpoint, flags.FLAGS.workdir,
                                    encoder_only=flags.FLAGS.encoder_only))
    print(f"wrote {out}")
  app.run(main)
