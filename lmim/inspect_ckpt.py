"""What a workdir's checkpoints hold.

    lmim-inspect workdirs/demo [--step 400]     # summary: steps, items, parameters, config changes
    lmim-inspect workdirs/demo --full           # every array's shape and dtype, the whole config

The summary names the saved steps, the step's training progress and data position, each item's
size, the trainable parameters per network, the data, and the config fields the run changed
from its method's defaults (the official recipe's values, lmim.config_lib.base_config).
Reads only Orbax metadata and the JSON meta item, never array data, so it is instant on any
checkpoint size and safe to run beside a training job (it opens the directory read-only).
"""
import argparse
import json
import sys

from absl import logging as absl_logging
import jax
import numpy as np

from lmim.checkpoint import Checkpointer, find_checkpoint_dir, flat_leaves, unfinished_saves
from lmim.errors import LmimError
from lmim.train_state import CHECKPOINT_ITEMS

# Meta keys shown in the step summary or in their own section; any other key is listed as is.
_SUMMARY_KEYS = ("step", "data_position", "method", "process_count", "jax_version")
_SECTION_KEYS = ("config", "data")
# The config as the user wrote it, before durations were resolved: `config` is what actually ran.
_OMITTED_KEYS = ("user_config",)


def _itemsize(dtype: str) -> int:
  try:
    return np.dtype(dtype).itemsize
  except TypeError:  # extended dtypes (typed PRNG keys) have no numpy size
    return 0


def _item_lines(ckpt: Checkpointer, step: int, item: str) -> list[str]:
  leaves = flat_leaves(ckpt.saved_tree(step, item))
  count = sum(int(np.prod(shape)) for shape, _ in leaves.values())
  nbytes = sum(int(np.prod(shape)) * _itemsize(dtype) for shape, dtype in leaves.values())
  lines = [f"[{item}] {len(leaves)} arrays, {count:,} values, {nbytes:,} bytes "
           f"({nbytes / 2**20:.2f} MiB)"]
  width = max((len(k) for k in leaves), default=0)
  shape_width = max((len(str(s)) for s, _ in leaves.values()), default=0)
  lines += [f"  {name:<{width}}  {str(shape):<{shape_width}}  {dtype}"
            for name, (shape, dtype) in sorted(leaves.items())]
  return lines


def _size(count: int) -> str:
  return f"{count / 1e6:.2f}M" if count >= 1e5 else f"{count:,}"


def _config_changes(config: dict) -> list[str]:
  """'field: value (default ...)' for every field that differs from the method's defaults."""
  from lmim import config_lib  # pylint: disable=import-outside-toplevel
  try:
    defaults = config_lib.base_config(config.get("method", "latent_mim")).to_dict()
  except LmimError:
    return [f"  (unknown method {config.get('method')!r}: no defaults to compare with)"]
  changes = config_lib.diff_configs(defaults, config_lib.upgrade(config), ignore=("evals",))
  # diff_configs words it as checkpoint/now: here the first tree is the defaults.
  return ["  " + c.replace(": checkpoint=", ": default ").replace(" now=", " -> ") for c in changes]


def summary(workdir: str, step: int | None = None) -> str:
  """A screenful about `workdir` at `step` (default: the latest); `inspect` lists everything."""
  directory = find_checkpoint_dir(workdir)
  with Checkpointer(directory, create=False, read_only=True) as ckpt:
    steps = ckpt.all_steps()
    step = steps[-1] if step is None else step
    meta = ckpt.restore_meta(step)  # raises a CheckpointError naming the saved steps
    items = {name: flat_leaves(ckpt.saved_tree(step, name)) for name in ckpt.items(step)}
  config = meta.get("config", {})
  total = config.get("total_steps")
  lines = [f"{directory}: {len(steps)} step(s) saved: " + ", ".join(str(s) for s in steps),
           f"step {step}" + (f" of {total}" if total else "") + f" ({meta.get('method', '?')}), data position "
           f"{meta.get('data_position', '?'):,} (global example index), saved by "
           f"{meta.get('process_count', '?')} process(es), jax {meta.get('jax_version', '?')}"]
  leftovers = unfinished_saves(directory)
  if leftovers:
    lines.append(f"unfinished saves (ignored): {', '.join(leftovers)}")
  order = {name: i for i, name in enumerate(CHECKPOINT_ITEMS)}
  parts = []
  for name in sorted(items, key=lambda n: (order.get(n, len(order)), n)):
    leaves = items[name]
    nbytes = sum(int(np.prod(shape)) * _itemsize(dtype) for shape, dtype in leaves.values())
    parts.append(f"{name} {len(leaves)} arrays, {nbytes / 2**20:.2f} MiB")
  lines.append("items: " + "; ".join(parts))
  params = items.get("params", {})
  by_net = {}
  for path, (shape, _) in params.items():
    by_net[path.split("/")[0]] = by_net.get(path.split("/")[0], 0) + int(np.prod(shape))
  if by_net:
    lines.append(f"trainable parameters: {sum(by_net.values()):,} (" +
                 ", ".join(f"{net} {_size(n)}" for net, n in sorted(by_net.items())) + ")")
  d = meta.get("data")
  if d:
    count = d.get("num_examples")
    lines.append(f"data: {d.get('name')}, {f'{count:,}' if count else '?'} examples, {d.get('channels')} "
                 f"channel{'s' if d.get('channels') != 1 else ''}")
  written = meta.get("user_config") or config  # as the run's config said it (before durations resolved)
  if written:
    changes = _config_changes(written)
    lines.append(f"config: {len(changes)} field(s) differ from the {config.get('method', '?')} defaults "
                 "(evals not listed):")
    lines += changes
  lines.append("(--full lists every array and the whole config)")
  return "\n".join(lines)


def inspect(workdir: str, step: int | None = None) -> str:
  """The report for `workdir` (or its checkpoints/ directory) at `step` (default: the latest).

  Raises:
    CheckpointError: the path does not exist, holds no checkpoint, or lacks `step`.
  """
  directory = find_checkpoint_dir(workdir)
  with Checkpointer(directory, create=False, read_only=True) as ckpt:
    steps = ckpt.all_steps()
    latest = steps[-1]
    step = latest if step is None else step
    meta = ckpt.restore_meta(step)  # raises a CheckpointError naming the saved steps
    lines = [f"checkpoint directory: {ckpt.directory}",
             "steps: " + ", ".join(f"{s}{' (latest)' if s == latest else ''}" for s in steps)]
    leftovers = unfinished_saves(directory)
    if leftovers:
      lines.append(f"unfinished saves (ignored): {', '.join(leftovers)} (in flight, or "
                   "interrupted; never restored)")
    lines += ["", f"step {step}:",
              f"  step: {meta.get('step', '?')}",
              f"  data position: {meta.get('data_position', '?')} (global example index)"]
    if "method" in meta:
      lines.append(f"  method: {meta['method']}")
    if "process_count" in meta or "jax_version" in meta:
      lines.append(f"  saved by: {meta.get('process_count', '?')} process(es), "
                   f"jax {meta.get('jax_version', '?')}")
    for key in sorted(set(meta) - set(_SUMMARY_KEYS + _SECTION_KEYS + _OMITTED_KEYS)):
      lines.append(f"  {key}: {json.dumps(meta[key], sort_keys=True)}")
    order = {name: i for i, name in enumerate(CHECKPOINT_ITEMS)}
    for item in sorted(ckpt.items(step), key=lambda n: (order.get(n, len(order)), n)):
      lines += [""] + _item_lines(ckpt, step, item)
  if "data" in meta:
    lines += ["", "[data] " + json.dumps(meta["data"], sort_keys=True)]
  config = json.dumps(meta.get("config", {}), indent=2, sort_keys=True, default=str)
  lines += ["", "[config]", config]
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(prog="lmim-inspect", description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="an lmim workdir or its checkpoints/ directory")
  parser.add_argument("--step", type=int, default=None, help="a saved step (default: the latest)")
  parser.add_argument("--full", action="store_true", help="every array's shape and dtype, and the whole config")
  args = parser.parse_args(argv)
  try:
    print((inspect if args.full else summary)(args.workdir, args.step))
  except LmimError as e:
    print(f"lmim: error: {e}", file=sys.stderr)
    return 2
  return 0


def cli() -> None:
  """The `lmim-inspect` command (python -m lmim.inspect_ckpt)."""
  # Inspection reads files only: never claim an accelerator that a training job may be using.
  jax.config.update("jax_platforms", "cpu")
  absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's notes on read-only opening are noise
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  cli()
