"""Input pipelines on grain, addressed by a global example index.

Training stream: global example e = 0, 1, 2, ... reads source[perm_epoch[e mod N]] with
epoch = e // N (grain reshuffles every epoch from the seed) and augments it with an RNG seeded by
(seed, e). Optimiser step s consumes e ∈ [s·B, (s+1)·B); its micro-batch j holds rows
e = s·B + j·m + r (m = B / accum_steps), and process p of P loads rows r ∈ [p·m/P, (p+1)·m/P).

So the whole run is a pure function of (seed, e): resuming needs only the step (data position =
s·B), and changing the number of processes or the accumulation split changes who loads an
example, never which example or which augmentation it gets.

Evaluation stream: the split in order, each process a contiguous share, padded at the end so
every process runs the same number of batches; padded rows carry mask=False.
"""
import functools
import math

import grain
import numpy as np

from lmim.data import transforms
from lmim.errors import ConfigError


def _train_example(item, rng, *, size, mean, std, min_crop):
  index, ex = item
  return {"image": transforms.train_transform(ex["image"], rng, size=size, mean=mean, std=std,
                                              min_crop=min_crop),
          "index": np.int64(index)}


def train_batches(source, info, *, image_size: int, global_batch: int, accum_steps: int = 1,
                  start_step: int = 0, seed: int = 0, min_crop: float = 0.2, process_index: int = 0,
                  process_count: int = 1, num_threads: int = 8, prefetch: int = 4):
  """Infinite iterator of process-local {'image': (accum, m/P, S, S, C), 'index': (accum, m/P)}."""
  if global_batch % (accum_steps * process_count):
    raise ConfigError("batch_size", global_batch,
                      f"must be divisible by accum_steps × processes = {accum_steps * process_count}")
  micro = global_batch // accum_steps
  local = micro // process_count
  stream = (grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
            .map_with_index(lambda e, ex: (e, ex))
            .random_map(functools.partial(_train_example, size=image_size, mean=info.mean,
                                          std=info.std, min_crop=min_crop), seed=seed))

  def global_index(k: int) -> int:
    """k-th example this process loads -> its global example index."""
    step, rest = divmod(k, accum_steps * local)
    j, r = divmod(rest, local)
    return step * global_batch + j * micro + process_index * local + r

  per_step = accum_steps * local
  ds = (grain.MapDataset.range(start_step * per_step, 1 << 62).map(lambda k: stream[global_index(k)])
        .batch(local).batch(accum_steps))
  read = grain.ReadOptions(num_threads=max(1, num_threads), prefetch_buffer_size=max(1, prefetch) * per_step)
  return iter(ds.to_iter_dataset(read))


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  per_process = math.ceil(num_examples / process_count)
  return max(1, math.ceil(per_process / (batch_size // process_count)))


def eval_batches(source, info, *, image_size: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1, num_threads: int = 8):
  """Process-local {'image', 'label', 'mask', 'index'} batches of batch_size/P over the split."""
  if batch_size % process_count:
    raise ConfigError("batch_size", batch_size, f"must be divisible by the process count {process_count}")
  n, local = len(source), batch_size // process_count
  steps = num_eval_batches(n, batch_size, process_count)
  share = steps * local                       # rows per process, padding included
  start = process_index * share

  def load(k: int):
    e = start + k
    if e < n:
      ex = source[e]
      return {"image": transforms.eval_transform(ex["image"], size=image_size, mean=info.mean, std=info.std),
              "label": np.int32(ex["label"]), "mask": np.bool_(True), "index": np.int64(e)}
    return {"image": np.zeros((image_size, image_size, info.channels), np.float32),
            "label": np.int32(-1), "mask": np.bool_(False), "index": np.int64(-1)}

  ds = grain.MapDataset.range(share).map(load).batch(local)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=max(1, num_threads),
                                                   prefetch_buffer_size=2 * local)))
