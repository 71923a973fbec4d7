"""Checkpoints: a small facade over Orbax's CheckpointManager (the only module importing orbax).

Layout: `<workdir>/checkpoints/<step>/{params,ema_params,opt_state,meta}`. Each item is saved
separately (StandardSave; `meta` as JSON: config, step, data position, data statistics), so a
probe can restore the EMA encoder alone, onto any mesh, without reading the optimiser state.

Guarantees:
- saves are asynchronous and atomic: Orbax writes into a temporary directory and renames it on
  commit, so a crash mid-save leaves the previous checkpoints untouched and the unfinished step
  invisible to `latest_step()`;
- retention keeps the last `keep_last` steps plus every `keep_every_steps`-th step;
- restores are strict: the saved tree of each requested item is compared with the expected one
  first, and any missing, extra or mismatched leaf raises a CheckpointError listing them all —
  never a silent partial load.
"""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from lmim.errors import CheckpointError
from lmim.train_state import CHECKPOINT_ITEMS


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def flat_leaves(tree) -> dict:
  """{'a/b/c': (shape, dtype)} for arrays, ShapeDtypeStructs or Orbax ArrayMetadata leaves.

  Namedtuple fields, dict keys and sequence indices all become path components, which is how
  Orbax stores optax states (as lists of dicts), so saved and expected trees compare directly.
  """
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "/".join(_key_name(k) for k in path)
    shape = tuple(getattr(leaf, "shape", np.shape(leaf)))
    out[name] = (shape, str(np.dtype(getattr(leaf, "dtype", np.asarray(leaf).dtype))))
  return out


def tree_diff(expected, saved) -> tuple[list[str], list[str], list[str]]:
  """(missing, extra, mismatched) leaf paths between an expected and a saved tree."""
  e, s = flat_leaves(expected), flat_leaves(saved)
  missing = sorted(set(e) - set(s))
  extra = sorted(set(s) - set(e))
  mismatched = [f"{k} (saved {s[k][0]} {s[k][1]}, expected {e[k][0]} {e[k][1]})"
                for k in sorted(set(e) & set(s)) if e[k] != s[k]]
  return missing, extra, mismatched


def format_diff(item: str, missing, extra, mismatched) -> str:
  parts = []
  for label, names in (("missing from the checkpoint", missing), ("extra in the checkpoint", extra),
                       ("shape/dtype mismatch", mismatched)):
    if names:
      parts.append(f"{label} ({len(names)}): " + ", ".join(names))
  return f"item '{item}' does not match the expected tree — " + "; ".join(parts)


def find_checkpoint_dir(path: str) -> str:
  """A workdir (holding `checkpoints/`) or a checkpoint directory -> the checkpoint directory."""
  for cand in (os.path.join(path, "checkpoints"), path):
    if os.path.isdir(cand) and ocp.utils.checkpoint_steps(cand):
      return cand
  if not os.path.exists(path):
    raise CheckpointError(f"{path} does not exist")
  raise CheckpointError(f"{path} holds no lmim checkpoint (expected {path}/checkpoints/<step>/)")


class Checkpointer:
  def __init__(self, directory: str, *, keep_last: int = 3, keep_every_steps: int | None = None,
               async_save: bool = True, create: bool = True, item_names=CHECKPOINT_ITEMS):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep_last, keep_period=keep_every_steps, create=create,
        enable_async_checkpointing=async_save)
    # Registering the handlers up front lets a fresh process read item metadata before restoring.
    handlers = {name: ocp.StandardCheckpointHandler() for name in item_names}
    handlers["meta"] = ocp.JsonCheckpointHandler()
    self._mngr = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)

  # Queries ------------------------------------------------------------------------------------
  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def items(self, step: int) -> list[str]:
    self._check_step(step)
    return sorted(k for k in self._mngr.item_metadata(step).keys() if k != "meta")

  def saved_tree(self, step: int, item: str):
    """The saved tree of one item: Orbax ArrayMetadata leaves (shape, dtype), no data read."""
    md = self._mngr.item_metadata(step)[item]
    return getattr(md, "tree", md)

  # Save -----------------------------------------------------------------------------------------
  def save(self, step: int, items: dict, meta: dict, *, force: bool = False) -> bool:
    """Start an (async) save of the non-None items plus `meta`; every process must call it."""
    args = {k: ocp.args.StandardSave(v) for k, v in items.items() if v is not None}
    args["meta"] = ocp.args.JsonSave(meta)
    return self._mngr.save(int(step), args=ocp.args.Composite(**args), force=force)

  def wait(self):
    self._mngr.wait_until_finished()

  def close(self):
    self._mngr.close()

  # Restore --------------------------------------------------------------------------------------
  def restore_meta(self, step: int | None = None) -> dict:
    step = self._resolve(step)
    return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int | None, abstract: dict) -> dict:
    """Restore the items in `abstract` ({item: tree of ShapeDtypeStruct with shardings}) strictly.

    Only the requested items are read, each onto the shardings its abstract leaves carry, which
    may belong to a different mesh than the one that saved it.
    """
    step = self._resolve(step)
    saved_items = self.items(step)
    problems = []
    for item, tree in abstract.items():
      if item not in saved_items:
        problems.append(f"item '{item}' was not saved at step {step} (saved: {', '.join(saved_items)})")
        continue
      missing, extra, mismatched = tree_diff(tree, self.saved_tree(step, item))
      if missing or extra or mismatched:
        problems.append(format_diff(item, missing, extra, mismatched))
    if problems:
      raise CheckpointError(f"checkpoint {self.directory} step {step} cannot be restored into this "
                            "model: " + " | ".join(problems))
    args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    return dict(self._mngr.restore(step, args=ocp.args.Composite(**args)))

  def _resolve(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        raise CheckpointError(f"{self.directory} holds no lmim checkpoint")
    self._check_step(step)
    return step

  def _check_step(self, step: int):
    if step not in self._mngr.all_steps():
      raise CheckpointError(f"{self.directory} has no checkpoint at step {step} "
                            f"(steps: {self.all_steps() or 'none'})")
