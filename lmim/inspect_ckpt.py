"""List what a workdir's checkpoints hold: steps, items, leaf shapes, and the saved config.

    python -m lmim.inspect_ckpt workdirs/demo [--step 400]
"""
import json
import sys

import numpy as np

from lmim.checkpoint import Checkpointer, find_checkpoint_dir, flat_leaves
from lmim.errors import LmimError


def inspect(workdir: str, step: int | None = None) -> str:
  directory = find_checkpoint_dir(workdir)
  ckpt = Checkpointer(directory, create=False)
  steps = ckpt.all_steps()
  step = ckpt.latest_step() if step is None else step
  lines = [f"checkpoints: {directory}",
           "steps: " + ", ".join(f"{s}{' (latest)' if s == steps[-1] else ''}" for s in steps)]
  meta = ckpt.restore_meta(step)
  lines.append(f"step {step}: data position {meta.get('data_position')} (global example index), "
               f"method {meta.get('method')}, saved by {meta.get('process_count', '?')} process(es)")
  for item in ckpt.items(step):
    leaves = flat_leaves(ckpt.saved_tree(step, item))
    count = sum(int(np.prod(shape)) for shape, _ in leaves.values())
    nbytes = sum(int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in leaves.values())
    lines.append(f"\n[{item}] {len(leaves)} arrays, {count:,} values, {nbytes / 2**20:.2f} MiB")
    width = max((len(k) for k in leaves), default=0)
    lines += [f"  {name:<{width}}  {str(shape):<16} {dtype}" for name, (shape, dtype) in sorted(leaves.items())]
  if "data" in meta:
    lines.append(f"\n[data] {json.dumps(meta['data'])}")
  lines.append("\n[config]\n" + json.dumps(meta.get("config", {}), indent=1, sort_keys=True, default=str))
  ckpt.close()
  return "\n".join(lines)


def main(argv: list[str]) -> int:
  import argparse  # pylint: disable=import-outside-toplevel
  parser = argparse.ArgumentParser(prog="python -m lmim.inspect_ckpt", description=__doc__.splitlines()[0])
  parser.add_argument("workdir", help="an lmim workdir or its checkpoints/ directory")
  parser.add_argument("--step", type=int, default=None, help="a saved step (default: the latest)")
  args = parser.parse_args(argv)
  try:
    print(inspect(args.workdir, args.step))
  except LmimError as e:
    print(f"lmim: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
