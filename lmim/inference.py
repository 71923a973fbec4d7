"""Running a function of the parameters over an evaluation stream, sharded over the mesh, with
the outputs gathered on the host in example-index order: what every probe and any method that
needs a pass over its data (CMAE's crop boxes) does with a frozen encoder."""
import functools

import jax
import numpy as np

from lmim import sharding


@functools.lru_cache(maxsize=16)
def jitted(fn, mesh):
  return jax.jit(fn, out_shardings=sharding.replicated(mesh))


def extract_fn(fn, params, batches, mesh):
  """Any `fn(params, images) -> (B, ...)` over an eval stream, sharded over the mesh -> host
  arrays (outputs, labels) without the padded rows, **in example-index order**. `fn` should be a
  stable function object (a method or module-level function) so its compilation is reused.

  With P processes a global batch is the concatenation of the processes' rows, and process p
  reads its own contiguous share of the split (lmim.data.eval_batches), so batch order
  interleaves the shares; each row's example index travels with it and the rows are put back in
  index order, so every caller sees the split's order on any number of processes."""
  jitted_fn = jitted(fn, mesh)
  per_process = max(1, mesh.size // jax.process_count())
  outs, labels, indices = [], [], []

  def fetch(out, g):   # the host copy: waits for that batch's program
    keep = np.asarray(jax.device_get(replicate(g["mask"], mesh)))
    outs.append(np.asarray(jax.device_get(out))[keep])
    labels.append(np.asarray(jax.device_get(replicate(g["label"], mesh)))[keep])
    indices.append(np.asarray(jax.device_get(replicate(g["index"], mesh)))[keep])

  # One batch in flight: batch i+1 is read and dispatched before batch i is fetched, so the
  # host's input work and the device's forward overlap (a fetch right after each dispatch would
  # leave the device idle while the host prepares the next batch).
  pending = None
  for batch in batches:
    local = {k: batch[k] for k in ("image", "label", "mask")}
    local["index"] = np.asarray(batch["index"], np.int32) if "index" in batch else \
        np.full(len(batch["mask"]), -1, np.int32)
    g = sharding.global_batch(pad_rows(local, per_process), mesh)
    current = (jitted_fn(params, g["image"]), g)
    if pending is not None:
      fetch(*pending)
    pending = current
  if pending is not None:
    fetch(*pending)
  outs, labels, indices = np.concatenate(outs), np.concatenate(labels), np.concatenate(indices)
  if np.all(indices >= 0):
    order = np.argsort(indices, kind="stable")
    outs, labels = outs[order], labels[order]
  return outs, labels


def pad_rows(batch: dict, multiple: int) -> dict:
  """Pad a process-local batch with masked-out rows to a multiple of this process's devices."""
  n = len(batch["mask"])
  pad = -n % multiple
  if not pad:
    return batch
  return {k: np.concatenate([v, np.zeros((pad, *v.shape[1:]), v.dtype)]) for k, v in batch.items()}


@functools.lru_cache(maxsize=4)
def _replicator(mesh):
  return jax.jit(lambda x: x, out_shardings=sharding.replicated(mesh))


def replicate(x, mesh):
  """A sharded array, replicated on every device (readable on every process)."""
  return _replicator(mesh)(x)
