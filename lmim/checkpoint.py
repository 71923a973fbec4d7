"""Checkpoints: a small facade over Orbax's CheckpointManager (the only module importing orbax).

Layout: `<workdir>/checkpoints/<step>/{params,ema_params,opt_state,meta}`. Each state item is a
separate Orbax item (StandardSave), and `meta` is JSON (config, step, data position, data
statistics). Separate items are what let a probe read the EMA encoder alone, onto any mesh,
without touching the optimiser state: Orbax cannot restore a subset of one item's tree.

Guarantees, each checked by tests/test_checkpoint.py:
- saves are asynchronous and atomic. Orbax writes `<step>.orbax-checkpoint-tmp/` and renames it
  to `<step>/` on commit, so a crash mid-save leaves the earlier steps untouched and the
  unfinished one invisible to `latest_step()`; saving that step again replaces the leftover.
- retention keeps the newest `keep_last` steps plus every step divisible by `keep_every_steps`
  (the kept-forever steps count towards the newest `keep_last` too).
- restores are strict. The saved tree of each requested item (paths, shapes, dtypes, read from
  Orbax's metadata, no array data) is compared with the expected tree first; any missing, extra
  or mismatched leaf raises one CheckpointError that lists them all. Nothing is partially loaded,
  and nothing is silently cast (Orbax would cast a float32 leaf into a bfloat16 target).

Every process of a multi-host job must make the same calls; Orbax decides which host writes.
"""
import json
import os
import re
from typing import Any

from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as ocp_policies

from lmim.errors import CheckpointError, CheckpointReadError, CheckpointWriteError, first_line
from lmim.train_state import CHECKPOINT_ITEMS
from lmim.trees import path_name

META_ITEM = "meta"
# Orbax's suffix for a step that is still being written (or whose writer died).
TMP_SUFFIX = ".orbax-checkpoint-tmp"
# A diff longer than this many paths per kind is cut, with a count of the rest: past that
# point the first paths show the pattern (a renamed module, a different width) better.
_MAX_LISTED = 25


# Trees ------------------------------------------------------------------------------------------

def _dtype_name(dtype) -> str:
  try:
    return np.dtype(dtype).name
  except TypeError:  # extended dtypes (typed PRNG keys) have no numpy equivalent
    return str(dtype)


def _leaves_by_path(tree) -> list[tuple[str, Any]]:
  return [(path_name(path), leaf)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def flat_leaves(tree) -> dict[str, tuple[tuple[int, ...], str]]:
  """{'a/b/c': (shape, dtype name)} for arrays, ShapeDtypeStructs or Orbax metadata leaves.

  Namedtuple fields, dict keys and sequence indices all become path components. Orbax stores an
  optax state as lists of dicts (`0/mu/encoder/...`), and a namedtuple flattens to the same path,
  so an expected tree and a saved one compare directly. Empty nodes (EmptyState, None) have no
  leaves on either side.

  Args:
    tree: a pytree of leaves with shape and dtype (Python scalars are read as numpy would).

  Returns:
    One entry per leaf, keyed by its '/'-joined path.
  """
  out = {}
  for name, leaf in _leaves_by_path(tree):
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      leaf = np.asarray(leaf)
    out[name] = (tuple(int(d) for d in leaf.shape), _dtype_name(leaf.dtype))
  return out


def tree_diff(expected, saved) -> tuple[list[str], list[str], list[str]]:
  """Compares an expected tree with a saved one, leaf by leaf.

  Args:
    expected: the tree a caller wants (arrays or ShapeDtypeStructs).
    saved: the tree on disk (Orbax metadata, or any pytree).

  Returns:
    (missing, extra, mismatched): paths expected but not saved, paths saved but not expected, and
    'path (saved SHAPE DTYPE, expected SHAPE DTYPE)' for leaves present in both that differ.
  """
  e, s = flat_leaves(expected), flat_leaves(saved)
  missing = sorted(set(e) - set(s))
  extra = sorted(set(s) - set(e))
  mismatched = [f"{k} (saved {s[k][0]} {s[k][1]}, expected {e[k][0]} {e[k][1]})"
                for k in sorted(set(e) & set(s)) if e[k] != s[k]]
  return missing, extra, mismatched


def write_failure_reason(err: BaseException) -> str:
  """Why a write failed, in words: the OS error of the chain (TensorStore reports it as
  `[os_error_code='28']` inside a ValueError), else the first line of the message."""
  cause = err
  while cause is not None:
    if isinstance(cause, OSError) and cause.errno:
      return f"{os.strerror(cause.errno)} ({cause.filename})" if cause.filename else os.strerror(cause.errno)
    m = re.search(r"os_error_code='?(\d+)", str(cause))
    if m:
      path = re.search(r'Failed writing: "([^"]+)"', str(cause))
      return os.strerror(int(m.group(1))) + (f" ({path.group(1)})" if path else "")
    cause = cause.__cause__ or cause.__context__
  return first_line(err)


def _write_failure(err: BaseException, directory: str) -> CheckpointWriteError:
  reason = write_failure_reason(err)
  return CheckpointWriteError(f"writing a checkpoint in {directory} failed: {reason}", reason)


def _listing(names: list[str]) -> str:
  shown = ", ".join(names[:_MAX_LISTED])
  return shown + (f", ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else "")


def format_diff(item: str, missing: list[str], extra: list[str], mismatched: list[str]) -> str:
  """One line naming every kind of difference, so a single error shows the whole problem."""
  parts = []
  for label, names in (("missing from the checkpoint", missing),
                       ("extra in the checkpoint", extra),
                       ("shape/dtype mismatch", mismatched)):
    if names:
      parts.append(f"{label} ({len(names)}): {_listing(names)}")
  return f"item '{item}' does not match the expected tree: " + "; ".join(parts)


def abstract_like(tree, shardings=None):
  """A restore target: a ShapeDtypeStruct per leaf of `tree`, placed on the given shardings.

  Args:
    tree: arrays, ShapeDtypeStructs (e.g. from `jax.eval_shape`) or anything with shape/dtype.
    shardings: one Sharding for every leaf; a callable leaf -> Sharding; a tree of Shardings
      matching `tree`; or None to keep each leaf's own `.sharding` (for live jax.Arrays).

  Returns:
    The tree of `jax.ShapeDtypeStruct(shape, dtype, sharding=...)`.
  """
  def sds(x, sharding):
    return jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding)

  if shardings is None:
    return jax.tree.map(lambda x: sds(x, getattr(x, "sharding", None)), tree)
  if isinstance(shardings, jax.sharding.Sharding):
    return jax.tree.map(lambda x: sds(x, shardings), tree)
  if callable(shardings):
    return jax.tree.map(lambda x: sds(x, shardings(x)), tree)
  return jax.tree.map(sds, tree, shardings)


# Directories ------------------------------------------------------------------------------------

def _is_local(path: str) -> bool:
  return "://" not in path


def unfinished_saves(directory: str) -> list[str]:
  """Temporary step directories in `directory`: saves in flight, or leftovers of a crash.

  Orbax never lists them as steps; they are reported so a person knows why a step is absent.
  Only local paths are listed.
  """
  if not (_is_local(directory) and os.path.isdir(directory)):
    return []
  return sorted(n for n in os.listdir(directory) if TMP_SUFFIX in n)


def _placement_problems(item: str, tree) -> str | None:
  """Why some target leaves cannot receive data (no sharding, or one that cannot tile the shape).

  Checked before reading so the user gets the leaf names instead of a TensorStore error from
  the middle of an asynchronous read.
  """
  unplaced, untileable = [], []
  for name, leaf in _leaves_by_path(tree):
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
      unplaced.append(name)
      continue
    try:
      sharding.shard_shape(tuple(leaf.shape))
    except ValueError:
      spec = getattr(sharding, "spec", sharding)
      untileable.append(f"{name} {tuple(leaf.shape)} over {spec}")
  if unplaced:
    return (f"item '{item}' target leaves carry no sharding ({_listing(unplaced)}); build the "
            "target with checkpoint.abstract_like")
  if untileable:
    return (f"item '{item}' target shardings do not evenly divide their shapes "
            f"({_listing(untileable)})")
  return None


def _host_local_leaves(items: dict[str, Any]) -> list[str]:
  """Arrays Orbax refuses in a multi-process job: those held entirely by this process.

  `jit(tx.init)(params)` without out_shardings is the usual source: constants such as the step
  count (and zeros_like moments) come out on one local device. Orbax would raise only after the
  save began, leaving an unfinished step directory behind; checking first keeps the directory clean.
  """
  return [f"{item}/{name}" for item, tree in items.items() if tree is not None
          for name, leaf in _leaves_by_path(tree)
          if isinstance(leaf, jax.Array) and leaf.is_fully_addressable]


def find_checkpoint_dir(path: str) -> str:
  """A workdir (holding `checkpoints/`) or a checkpoint directory -> the checkpoint directory.

  Only committed steps count: a directory holding nothing but an interrupted save is reported as
  holding no checkpoint, since there is nothing in it that could be restored.

  Raises:
    CheckpointError: when neither `path/checkpoints` nor `path` holds a committed step.
  """
  for cand in (os.path.join(path, "checkpoints"), path):
    if epath.Path(cand).is_dir() and ocp.utils.checkpoint_steps(cand):
      return cand
  if not epath.Path(path).exists():
    raise CheckpointError(f"{path} holds no lmim checkpoint: the path does not exist")
  if not epath.Path(path).is_dir():
    raise CheckpointError(f"{path} holds no lmim checkpoint: it is a file; pass the workdir")
  leftovers = unfinished_saves(os.path.join(path, "checkpoints")) or unfinished_saves(path)
  note = f" (only unfinished saves: {', '.join(leftovers)})" if leftovers else ""
  raise CheckpointError(f"{path} holds no lmim checkpoint{note}: expected a workdir with "
                        f"checkpoints/<step>/ or a checkpoint directory with <step>/")


# The facade -------------------------------------------------------------------------------------

class Checkpointer:
  """Facade over ocp.CheckpointManager; the only place in lmim that touches Orbax.

  Keeping Orbax behind these few methods means a move to Orbax's v1 API, or a change of storage
  format, stays inside this file; callers only see steps, item dicts and CheckpointErrors.
  """

  def __init__(self, directory: str, *, keep_last: int | None = 3,
               keep_every_steps: int | None = None, async_save: bool = True, create: bool = True,
               read_only: bool = False, item_names: tuple[str, ...] = CHECKPOINT_ITEMS):
    """Opens (and with `create`, makes) a checkpoint directory.

    Args:
      directory: where the steps live (the trainer passes `<workdir>/checkpoints`).
      keep_last: how many of the newest steps to keep (None: all).
      keep_every_steps: also keep, for good, every step divisible by this.
      async_save: `save` returns once the arrays are copied off the devices and writes in the
        background; `wait` blocks until it is committed.
      create: create `directory` if missing. Readers pass False so that a typo in a path is
        reported rather than turned into a new empty directory.
      read_only: never write or delete (probes, inspection); `save` then raises.
      item_names: the array items this checkpoint may hold. Their handlers are registered up
        front so that a fresh process can read item metadata before restoring anything.
    """
    if keep_last is not None and keep_last < 1:
      raise CheckpointError(f"keep_last={keep_last!r} is invalid: keep at least 1 step (or None "
                            "to keep all)")
    if keep_every_steps is not None and keep_every_steps < 1:
      raise CheckpointError(f"keep_every_steps={keep_every_steps!r} is invalid: use a positive "
                            "step count or None")
    self.directory = os.path.abspath(directory) if _is_local(directory) else directory
    self.read_only = read_only
    self._item_names = tuple(item_names)
    policies = [ocp_policies.LatestN(n=keep_last)]
    if keep_every_steps:
      policies.append(ocp_policies.EveryNSteps(interval_steps=keep_every_steps))
    options = ocp.CheckpointManagerOptions(
        # keep_period/max_to_keep are deprecated in Orbax 0.12 in favour of explicit policies.
        preservation_policy=ocp_policies.AnyPreservationPolicy(policies),
        create=create and not read_only, read_only=read_only,
        save_interval_steps=0 if read_only else 1,  # what read_only implies; saves Orbax's warning
        enable_async_checkpointing=async_save)
    handlers = {name: ocp.StandardCheckpointHandler() for name in self._item_names}
    handlers[META_ITEM] = ocp.JsonCheckpointHandler()
    self._mngr = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)
    self._closed = False
    self._metadata = {}

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  # Queries --------------------------------------------------------------------------------------

  def latest_step(self) -> int | None:
    """The newest committed step (never an unfinished save), or None."""
    return self._mngr.latest_step()

  def all_steps(self) -> list[int]:
    """Every committed step, ascending."""
    return sorted(self._mngr.all_steps())

  def items(self, step: int) -> list[str]:
    """The array items saved at `step` (an item that was None at save time is absent)."""
    self._check_step(step)
    return sorted(k for k in self._item_metadata(step).keys() if k != META_ITEM)

  def saved_tree(self, step: int, item: str):
    """The saved tree of one item, with Orbax ArrayMetadata leaves (shape, dtype); no data read."""
    md = self._item_metadata(step)[item]
    return getattr(md, "tree", md)

  def reached_preemption(self, step: int) -> bool:
    """True once the cluster has signalled a preemption: save this step, `wait`, and exit."""
    return self._mngr.reached_preemption(step)

  # Save -----------------------------------------------------------------------------------------

  def save(self, step: int, items: dict[str, Any], meta: dict, *, force: bool = False) -> bool:
    """Starts a save of the non-None `items` plus `meta` as step `step`.

    Every process must call this with the same arguments. With async saving it returns once the
    arrays are copied to host memory; the write and the commit (rename) finish in the background,
    and retention is applied after the commit.

    Args:
      step: the step number; must exceed every saved step.
      items: {'params': tree, 'ema_params': tree or None, 'opt_state': tree}.
      meta: a JSON-able dict. Tuples come back as lists and keys as strings (it is JSON).
      force: save even if Orbax's own policy would skip this step; a step that already exists
        then raises instead of being skipped.

    Returns:
      Whether a save was started (False only without `force`, for a step not above the latest).
    """
    if self.read_only:
      raise CheckpointError(f"{self.directory} was opened read-only; cannot save step {step}")
    unknown = sorted(set(items) - set(self._item_names))
    if unknown:
      raise CheckpointError(f"cannot save items {unknown}: this checkpointer holds "
                            f"{list(self._item_names)} (pass item_names= to add more)")
    local = _host_local_leaves(items) if jax.process_count() > 1 else []
    if local:
      raise CheckpointError(
          f"cannot save step {step}: in a {jax.process_count()}-process job every array must be "
          f"global (NamedSharding over the whole mesh), but these live on one process's devices "
          f"({_listing(local)}); create them with out_shardings, e.g. jit(init, out_shardings=...)")
    try:
      json.dumps(meta)
    except (TypeError, ValueError) as e:
      raise CheckpointError(f"checkpoint meta for step {step} is not JSON-serialisable: {e}") from e
    self._metadata.pop(int(step), None)  # a forced save may reuse a step retention deleted
    args = {k: ocp.args.StandardSave(v) for k, v in items.items() if v is not None}
    args[META_ITEM] = ocp.args.JsonSave(meta)
    try:
      return self._mngr.save(int(step), args=ocp.args.Composite(**args), force=force)
    except ocp.checkpoint_manager.StepAlreadyExistsError as e:
      raise CheckpointError(f"{self.directory} already holds step {step}; a saved step is never "
                            "overwritten (resume from it, or use another workdir)") from e
    except Exception as e:  # this save, or the previous asynchronous one, failed to write
      raise _write_failure(e, self.directory) from e

  def wait(self) -> None:
    """Blocks until every started save is committed: before exit, reading back, or on preemption."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:
      raise _write_failure(e, self.directory) from e

  @property
  def closed(self) -> bool:
    return self._closed

  def close(self) -> None:
    """Waits for pending saves and releases Orbax's threads; safe to call twice."""
    if not self._closed:
      self._closed = True
      try:
        self._mngr.close()
      except Exception as e:
        raise _write_failure(e, self.directory) from e

  def quarantine(self, step: int) -> str:
    """Moves an unreadable step aside as `corrupt-<step>` (kept for a post-mortem, never deleted),
    so that later saves can reuse the step number. Process 0 renames; every process must call
    this, and every process then sees the step gone. Returns the new path."""
    src = os.path.join(self.directory, str(step))
    dst = os.path.join(self.directory, f"corrupt-{step}")
    n = 1
    while epath.Path(dst).exists():
      dst, n = os.path.join(self.directory, f"corrupt-{step}.{n}"), n + 1
    if jax.process_index() == 0:
      epath.Path(src).rename(dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices(f"lmim_quarantine_{step}")
    self._metadata.pop(int(step), None)
    self._mngr.reload()
    return dst

  # Restore --------------------------------------------------------------------------------------

  def restore_meta(self, step: int | None = None) -> dict:
    """The JSON meta saved with `step` (default: the latest)."""
    step = self._resolve(step)
    if META_ITEM not in self._item_metadata(step).keys():
      raise CheckpointError(f"{self.directory} step {step} has no '{META_ITEM}' item; it was not "
                            "written by lmim")
    args = ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
    try:
      return self._mngr.restore(step, args=args)[META_ITEM]
    except Exception as e:  # a truncated or garbled JSON file: unreadable, not incompatible
      raise CheckpointReadError(f"could not read step {step} of {self.directory}: {first_line(e)}") from e

  def restore(self, step: int | None, abstract: dict[str, Any]) -> dict[str, Any]:
    """Strictly restores the items in `abstract` onto the shardings their leaves carry.

    Only the requested items are read; the mesh may differ from the one that saved them (saved
    FSDP over 8 devices, restored onto 1 device or a 2x4 mesh).

    Args:
      step: a saved step, or None for the latest.
      abstract: {item: tree of jax.ShapeDtypeStruct(shape, dtype, sharding=...)}; see
        `abstract_like`. None items are skipped, as they are on save.

    Returns:
      {item: restored tree}, each with the structure (and optax state types) of its target.

    Raises:
      CheckpointError: the step or an item is missing, a target leaf has no sharding, a saved
        tree differs from its target in any leaf, or Orbax fails to read.
    """
    step = self._resolve(step)
    abstract = {k: v for k, v in abstract.items() if v is not None}
    if not abstract:
      return {}
    saved_items = self.items(step)
    problems = []
    for item, tree in abstract.items():
      if item not in saved_items:
        problems.append(f"item '{item}' was not saved at step {step} "
                        f"(saved: {', '.join(saved_items) or 'none'})")
        continue
      missing, extra, mismatched = tree_diff(tree, self.saved_tree(step, item))
      if missing or extra or mismatched:
        problems.append(format_diff(item, missing, extra, mismatched))
        continue
      placement = _placement_problems(item, tree)
      if placement:
        problems.append(placement)
    if problems:
      raise CheckpointError(f"checkpoint {self.directory} step {step} cannot be restored into this "
                            "model: " + " | ".join(problems))
    args = {k: ocp.args.StandardRestore(v) for k, v in abstract.items()}
    try:
      restored = self._mngr.restore(step, args=ocp.args.Composite(**args))
    except Exception as e:  # TensorStore/OCDBT errors on truncated or corrupt files
      raise CheckpointReadError(f"could not read step {step} of {self.directory}: {first_line(e)}") from e
    return {k: restored[k] for k in abstract}

  # Internals ------------------------------------------------------------------------------------

  def _item_metadata(self, step: int):
    # A committed step never changes, so its metadata is read once (save() drops the entry).
    if step not in self._metadata:
      try:
        self._metadata[step] = self._mngr.item_metadata(step)
      except Exception as e:  # a corrupt _METADATA / _CHECKPOINT_METADATA file
        raise CheckpointReadError(f"could not read the metadata of step {step} of {self.directory}: "
                                  f"{first_line(e)}") from e
    return self._metadata[step]

  def _resolve(self, step: int | None) -> int:
    if step is None:
      step = self.latest_step()
      if step is None:
        leftovers = unfinished_saves(self.directory)
        note = f" (only unfinished saves: {', '.join(leftovers)})" if leftovers else ""
        raise CheckpointError(f"{self.directory} holds no lmim checkpoint{note}")
    self._check_step(step)
    return int(step)

  def _check_step(self, step: int) -> None:
    if step not in self._mngr.all_steps():
      raise CheckpointError(f"{self.directory} has no checkpoint at step {step} "
                            f"(steps: {self.all_steps() or 'none'})")


