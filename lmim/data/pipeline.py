"""Input pipelines on grain, addressed by a global example index.

Training stream: global example e = 0, 1, 2, ... reads source[perm_epoch[e mod N]] with
epoch = e // N, where perm_epoch is a permutation of range(N) that depends only on (seed, epoch)
(grain's `shuffle(seed).repeat()` reshuffles every epoch), and is augmented with a generator that
depends only on (seed, e) (grain's `random_map` seeds a Philox counter with the element index).
Optimiser step s consumes e in [s·B, (s+1)·B); its micro-batch j holds rows e = s·B + j·m + r
(m = B / accum_steps), and process p of P loads rows r in [p·m/P, (p+1)·m/P).

So the whole run's data is a pure function of (seed, e): resuming needs only the step (the data
position is s·B, nothing else is state to checkpoint), and changing the number of processes or the
accumulation split changes who loads an example, never which example or which view of it.

Evaluation stream: the split in order, each process a contiguous share, padded at the end so every
process runs the same number of batches; padded rows carry mask=False.

Loading runs in grain's read threads (PIL decodes and resizes outside the GIL) with a prefetch
buffer, so it overlaps the device step.
"""
import dataclasses
import math
import sys
from typing import Iterator

import grain
import numpy as np

from lmim.data import transforms
from lmim.errors import ConfigError


###################################################################################################
# The training stream: random access by global example index.
###################################################################################################


def derived_seed(seed: int, purpose: int) -> int:
  """A 32-bit seed for one use (0: shuffle, 1: augmentation) of the run's seed.

  grain reseeds its shuffle with (seed + epoch) % 2**32 each epoch, so using adjacent run seeds
  directly would make seed 1's epoch 1 the same permutation as seed 2's epoch 0; hashing the run
  seed first makes such overlaps practically impossible.
  """
  return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


def image_keys(num_views: int) -> tuple[str, ...]:
  """The batch keys of a training example's views: 'image', then 'image2', 'image3', …"""
  return ("image",) + tuple(f"image{v + 1}" for v in range(1, num_views))


def _with_index(index, example):
  return index, example


@dataclasses.dataclass(frozen=True)
class _WithSourceIndex:
  """(index, example) -> (dataset index, example). Below a shuffle that is repeated, grain asks
  the source for index epoch·N + i (and wraps it itself), so the index is taken modulo N: without
  it, ContrastiveCrop boxes were looked up past the end in the second epoch."""
  size: int

  def __call__(self, index, example):
    return index % self.size, example


@dataclasses.dataclass(frozen=True)
class _TrainView:
  """(global index e, (dataset index, example)), rng -> {'image': float32 (S, S, C), 'index': e,
  'source_index': dataset index, 'label'} (+ 'image2' when two views are asked for; the views use
  successive draws of the same per-example RNG, so they differ and stay reproducible)."""
  size: int
  mean: tuple
  std: tuple
  min_crop: float
  num_views: int = 1
  flip: bool = True
  boxes: object = None      # (N, 4) ContrastiveCrop boxes by dataset index, or None
  alpha: float = 1.0
  finetune: object = None   # dict(rand_augment=..., erasing=...): MAE fine-tuning's view instead
  jitter: float = 0.0       # ColorJitter strength before the crop (data2vec 0.4); 0 = none
  crop_style: str = "torchvision"  # or "tf": MAE's TF-style RandomResizedCrop (its linear probe)

  def __call__(self, item, rng: np.random.Generator) -> dict:
    index, (source_index, example) = item
    box = None if self.boxes is None else self.boxes[source_index]
    out = {"index": np.int64(index), "source_index": np.int64(source_index),
           "label": np.int32(example.get("label", -1))}
    for key in image_keys(self.num_views):
      if self.finetune is not None:
        out[key] = transforms.finetune_transform(example["image"], rng, size=self.size, mean=self.mean,
                                                 std=self.std, min_crop=self.min_crop, **self.finetune)
      else:
        out[key] = transforms.train_transform(
            example["image"], rng, size=self.size, mean=self.mean, std=self.std, min_crop=self.min_crop,
            flip=self.flip, box=box, alpha=self.alpha, jitter=self.jitter, crop_style=self.crop_style)
    return out


def example_stream(source, info, *, image_size: int, seed: int, min_crop: float = 0.2, num_views: int = 1,
                   flip: bool = True, boxes=None, alpha: float = 1.0, finetune=None,
                   color_jitter: float = 0.0, crop_style: str = "torchvision") -> grain.MapDataset:
  """The infinite training stream as a random-access dataset: stream[e] is global example e."""
  view = _TrainView(image_size, tuple(info.mean), tuple(info.std), min_crop, num_views, flip, boxes, alpha,
                    finetune, color_jitter, crop_style)
  return (grain.MapDataset.source(source)
          .map_with_index(_WithSourceIndex(len(source)))  # the dataset index (ContrastiveCrop boxes)
          .shuffle(seed=derived_seed(seed, 0))   # stream[e] reads perm_{e // N}[e % N] ...
          .repeat()                              # ... with a new permutation every epoch
          .map_with_index(_with_index)
          .random_map(view, seed=derived_seed(seed, 1)))  # Philox(seed) at counter e: depends on (seed, e)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which global example the k-th example loaded by one process is."""
  global_batch: int
  accum_steps: int
  process_index: int
  process_count: int

  @property
  def micro(self) -> int:   # rows of one micro-batch, all processes
    return self.global_batch // self.accum_steps

  @property
  def local(self) -> int:   # rows of one micro-batch on this process
    return self.micro // self.process_count

  @property
  def per_step(self) -> int:  # examples this process loads per optimiser step
    return self.accum_steps * self.local

  def global_index(self, k: int) -> int:
    step, rest = divmod(k, self.per_step)
    j, r = divmod(rest, self.local)
    return step * self.global_batch + j * self.micro + self.process_index * self.local + r


@dataclasses.dataclass(frozen=True)
class _Gather:
  """k -> stream[global_index(k)]: this process's examples, in the order it batches them."""
  stream: grain.MapDataset
  layout: Layout

  def __call__(self, k: int) -> dict:
    return self.stream[self.layout.global_index(k)]


@dataclasses.dataclass(frozen=True)
class _SplitMicro:
  """(accum·m/P, ...) -> (accum, m/P, ...): one optimiser step's micro-batches."""
  accum_steps: int

  def __call__(self, batch: dict) -> dict:
    return {k: v.reshape(self.accum_steps, -1, *v.shape[1:]) for k, v in batch.items()}


def _check_train_args(source, *, image_size, global_batch, accum_steps, start_step, seed, min_crop,
                      process_index, process_count, num_threads, prefetch):
  if not (isinstance(accum_steps, int) and accum_steps >= 1):
    raise ConfigError("accum_steps", accum_steps, "an integer >= 1")
  if not isinstance(global_batch, int) or global_batch < 1 or global_batch % (accum_steps * process_count):
    raise ConfigError("batch_size", global_batch, f"a positive multiple of accum_steps × processes "
                      f"= {accum_steps} × {process_count} = {accum_steps * process_count}")
  if not (isinstance(seed, (int, np.integer)) and seed >= 0):
    raise ConfigError("seed", seed, "an integer >= 0")
  if not 0 < min_crop <= 1:
    raise ConfigError("input.min_crop", min_crop, "a fraction of the image area in (0, 1]")
  if num_threads < 0:
    raise ConfigError("input.num_threads", num_threads, "an integer >= 0 (0 loads in the calling thread)")
  if prefetch < 0:
    raise ConfigError("input.prefetch", prefetch, "an integer >= 0 (steps loaded ahead)")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
  if image_size < 1 or start_step < 0 or len(source) == 0:
    raise ValueError(f"need image_size >= 1, start_step >= 0 and a non-empty source "
                     f"(got {image_size}, {start_step}, {len(source)} examples)")


def train_batches(source, info, *, image_size: int, global_batch: int, accum_steps: int,
                  start_step: int, seed: int, min_crop: float = 0.2, process_index: int = 0,
                  process_count: int = 1, num_threads: int = 8, prefetch: int = 4, num_views: int = 1,
                  flip: bool = True, boxes=None, alpha: float = 1.0, finetune=None,
                  color_jitter: float = 0.0, crop_style: str = "torchvision") -> Iterator[dict]:
  """Infinite iterator of this process's share of each optimiser step, from `start_step` on.

  Yields {'image': float32 (accum_steps, m/P, S, S, C) normalised, 'index': int64 (accum_steps, m/P)
  global example indices, 'source_index': their dataset indices} (+ 'image2' with num_views=2),
  m = global_batch / accum_steps. `boxes` (N, 4) switch the crop to ContrastiveCrop with Beta(α, α)
  centres; `finetune` = dict(rand_augment=..., erasing=...) switches to MAE fine-tuning's view;
  `color_jitter` > 0 adds torchvision's ColorJitter(s, s, s) before the crop (data2vec).
  `num_threads` grain read threads load examples; `prefetch` steps' worth of examples are kept in
  flight ahead of the consumer.
  """
  _check_train_args(source, image_size=image_size, global_batch=global_batch, accum_steps=accum_steps,
                    start_step=start_step, seed=seed, min_crop=min_crop, process_index=process_index,
                    process_count=process_count, num_threads=num_threads, prefetch=prefetch)
  layout = Layout(global_batch, accum_steps, process_index, process_count)
  if boxes is not None and np.shape(boxes) != (len(source), 4):
    raise ValueError(f"boxes must be ({len(source)}, 4), one per example; got {np.shape(boxes)}")
  stream = example_stream(source, info, image_size=image_size, seed=int(seed), min_crop=min_crop,
                          num_views=num_views, flip=flip, boxes=boxes, alpha=alpha, finetune=finetune,
                          color_jitter=color_jitter, crop_style=crop_style)
  rows = grain.MapDataset.range(start_step * layout.per_step, sys.maxsize).map(_Gather(stream, layout))
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch * layout.per_step)
  return iter(rows.to_iter_dataset(read).batch(layout.per_step).map(_SplitMicro(accum_steps)))


###################################################################################################
# The evaluation stream: the split in order, padded.
###################################################################################################


def _check_eval_batch(batch_size: int, process_count: int):
  if not isinstance(batch_size, int) or batch_size < 1 or batch_size % process_count:
    raise ConfigError("evals.<name>.batch_size", batch_size,
                      f"a positive multiple of the process count {process_count}")


def num_eval_batches(num_examples: int, batch_size: int, process_count: int = 1) -> int:
  """Batches every process runs to cover `num_examples` once (the last ones padded)."""
  _check_eval_batch(batch_size, process_count)
  return math.ceil(num_examples / batch_size)


@dataclasses.dataclass(frozen=True)
class _EvalRow:
  """Row k of one process's share -> the eval view of example start + k, or a masked pad row."""
  source: object
  start: int
  size: int
  mean: tuple
  std: tuple
  channels: int
  resize: str

  def __call__(self, k: int) -> dict:
    e = self.start + k
    if e < len(self.source):
      ex = self.source[e]
      image = transforms.eval_transform(ex["image"], size=self.size, mean=self.mean, std=self.std,
                                        resize=self.resize)
      return {"image": image, "label": np.int32(ex["label"]), "mask": np.bool_(True), "index": np.int64(e)}
    return {"image": np.zeros((self.size, self.size, self.channels), np.float32),
            "label": np.int32(-1), "mask": np.bool_(False), "index": np.int64(-1)}


def eval_batches(source, info, *, image_size: int, batch_size: int, process_index: int = 0,
                 process_count: int = 1, resize: str = "center_crop", num_threads: int = 8,
                 prefetch: int = 2) -> Iterator[dict]:
  """This process's batches of batch_size/P rows over the split, in order.

  Views: `resize='center_crop'` is the evaluation view (transforms.eval_resize_center_crop);
  `'full'` squashes the whole image to S×S, so positions in the batch map to the whole image.

  Process p holds examples [p·R, (p+1)·R) with R = num_eval_batches · batch_size/P; rows past the
  end are padding. Yields {'image': float32 (b, S, S, C), 'label': int32 (b,) (-1 on padding),
  'mask': bool (b,) False on padding, 'index': int64 (b,) (-1 on padding)}.
  """
  _check_eval_batch(batch_size, process_count)
  if resize not in transforms.EVAL_RESIZES:
    raise ValueError(f"resize={resize!r} is not one of {sorted(transforms.EVAL_RESIZES)}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, process_count={process_count})")
  local = batch_size // process_count
  share = num_eval_batches(len(source), batch_size, process_count) * local
  row = _EvalRow(source, process_index * share, image_size, tuple(info.mean), tuple(info.std),
                 info.channels, resize)
  read = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch * local)
  return iter(grain.MapDataset.range(share).map(row).to_iter_dataset(read).batch(local))
