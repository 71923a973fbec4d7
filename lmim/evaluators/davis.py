"""DAVIS-2017 semi-supervised video object segmentation by label propagation, DINO's protocol
(`dino:eval_video_segmentation.py`, docs/methods.md §4d), scored as `davis2017-evaluation` does.

For every video of `split` (TFDS 'davis/480p' 'validation': DAVIS-2017 val, 30 sequences):
  frames   RGB /255, resized (bilinear, no antialias, rounded to 8 bits like cv2.resize on
           uint8) so the short side is `short_side` and the long side is floored to a multiple
           of `multiple`; normalised with `mean`/`std`; encoded at gap 0 on the rectangular
           grid (~30×52 patches at 480p) with the position table trained on the g×g grid
           interpolated to it as DINO does (`positions='interpolate'`, the default;
           'extrapolate' recomputes sin-cos positions at coordinates up to 52, never seen in
           training); `feature` patch tokens (default: after the final LN), L2-normalised;
           affinities at float32 (HIGHEST) matmul precision, also on TPU.
  frame 0  GT resized nearest (PIL) to the feature grid, one-hot (background = class 0).
  frame t  context = frame 0 (GT one-hot) + the `n_last_frames` previous frames (their soft
           label maps); A = exp(cos / temperature); a source patch is admissible only within
           `window` patches (|Δrow|, |Δcol| ≤ window; 0 = everywhere) in every context frame;
           keep the `topk` largest admissible affinities jointly over all sources (ties at the
           k-th value kept, as DINO's `aff < min(topk)` does), normalise, label = Σ w·label.
  output   bilinear ×p (half-pixel, = align_corners=False), per-channel min-max (channels with
           max > 0), argmax, nearest (PIL) resize to the original size.
Scoring (lmim.evaluators.davis_metrics): first and last frames excluded; objects 1..n of the
first GT frame; J and F per object per frame, per-object mean/recall/decay, averaged over
objects. Metrics are in % (the papers' unit): J_mean, J_recall, J_decay, F_mean, F_recall,
F_decay, JF_mean = (J_mean + F_mean) / 2.

Memory is bounded: frames are encoded `batch_size` at a time, sharded over the mesh, and
propagated one by one on the device as soon as they are encoded; the context is a fixed-size
buffer (first frame + a FIFO of `n_last_frames` slots with a validity mask), the classes are
padded to a multiple of 8, and the affinity is built `chunk` target rows at a time, so there is
one compile per frame shape and memory grows with neither the video length nor hw × n_ctx·hw.
Only the per-object per-frame scores stay on the host.

Data: TFDS 'davis/480p' read with `tfds.data_source` (array_record; TFDS's builder needs
TensorFlow, so it is built in a separate environment: the command is in the error an unprepared
dataset gives, lmim.data.location.how_to_prepare). Each example: video = {frames (N, H, W, 3),
segmentations (N, H, W, 1)}, metadata = {video_name, num_frames}.
"""
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from lmim import inference, sharding
from lmim.data import sources
from lmim.errors import ConfigError
from lmim.evaluators import common, davis_metrics, features as feats_lib
from lmim.models.vit import POSITIONS

log = logging.getLogger("lmim")

PATCH_FEATURES = ("patch_tokens", "patch_tokens_pre_norm")
MEAN = (0.485, 0.456, 0.406)
STD = (0.228, 0.224, 0.225)  # DINO's color_normalize (0.228, not ImageNet's 0.229)
CLASS_MULTIPLE = 8  # label channels are padded to a multiple of this: one compile for 1..7 objects


###################################################################################################
# Data.
###################################################################################################


def open_dataset(name: str, split: str, data_dir=None, prefix: str = "evals.davis"):
  """A TFDS video split as a random-access source (len, [i] -> example); one-line errors.
  (The evaluator protocol's hook for datasets that are not image classification splits.)"""
  try:  # registers 'davis': without TensorFlow, tfds' lazy registry does not import it
    import tensorflow_datasets.video.davis  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    pass  # then tfds.builder below reports the dataset as unknown, in one line
  src, info = sources.tfds_data_source(name, split, data_dir, prefix,
                                       unknown_hint="a TFDS video dataset such as 'davis/480p'")
  features = info.features
  video = features["video"] if "video" in features else None
  if video is None or not {"frames", "segmentations"} <= set(getattr(video, "feature", {}).keys()):
    raise ConfigError(f"{prefix}.data", name, "a video dataset with video/frames and video/segmentations "
                      "(TFDS 'davis/480p')")
  if len(src) == 0:
    raise ConfigError(f"{prefix}.split", split, f"a split with at least one video of {name}")
  return src


def read_video(example):
  """-> (name, frames (N, H, W, 3) uint8, segmentations (N, H, W) uint8)."""
  video = example["video"]
  name = example.get("metadata", {}).get("video_name", "")
  name = name.decode() if isinstance(name, bytes) else str(name)
  segs = np.asarray(video["segmentations"])
  return name, np.asarray(video["frames"], np.uint8), segs.reshape(segs.shape[:3]).astype(np.uint8)


def target_size(height: int, width: int, short_side: int, multiple: int) -> tuple[int, int]:
  """DINO's read_frame: the short side becomes `short_side`, the long side is floored to a
  multiple of `multiple` -> (th, tw). 854×480 -> (480, 832)."""
  if height > width:
    return int((short_side * height / width) // multiple * multiple), short_side
  return short_side, int((short_side * width / height) // multiple * multiple)


def resize_nearest(index_map, height: int, width: int) -> np.ndarray:
  """PIL's nearest-neighbour resize of a uint8 index map (what DINO uses for masks)."""
  return np.asarray(Image.fromarray(np.asarray(index_map, np.uint8)).resize((width, height), Image.NEAREST))


###################################################################################################
# Propagation (on the device).
###################################################################################################


@functools.lru_cache(maxsize=16)
def frame_feature_fn(encoder, feature: str, size: tuple, mean: tuple, std: tuple, positions: str = "interpolate"):
  """fn(params, frames (B, H, W, 3) uint8 as float) -> L2-normalised patch features (B, h·w, D)."""
  def fn(params, frames):
    x = jax.image.resize(frames.astype(jnp.float32), (frames.shape[0], *size, 3), "bilinear", antialias=False)
    x = jnp.clip(jnp.round(x), 0, 255) / 255.0
    x = (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
    f = feats_lib.select(encoder.encode(params, x, positions=positions), feature).astype(jnp.float32)
    return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)
  return fn


def propagate(target, ctx_feats, ctx_labels, ctx_valid, *, grid, window: int, topk: int,
              temperature: float, chunk: int | None = None):
  """Label propagation to one frame.

  target (h·w, D) and ctx_feats (n_ctx, h·w, D) L2-normalised features, ctx_labels (n_ctx, h·w, C),
  ctx_valid (n_ctx,) bool (padding slots of the queue are False) -> labels (h·w, C).
  Targets are processed `chunk` grid rows at a time (None: all at once); each target's top-k
  runs over every source of every context frame jointly.
  """
  h, w = grid
  n_ctx, hw, _ = ctx_feats.shape
  chunk = h if chunk is None else max(1, min(int(chunk), h))
  num_chunks = -(-h // chunk)
  sources = ctx_feats.reshape(n_ctx * hw, -1)
  labels = ctx_labels.reshape(n_ctx * hw, -1)
  src_rows = jnp.tile(jnp.arange(hw, dtype=jnp.int32) // w, n_ctx)
  src_cols = jnp.tile(jnp.arange(hw, dtype=jnp.int32) % w, n_ctx)
  src_valid = jnp.repeat(ctx_valid, hw)
  k = min(int(topk), n_ctx * hw)
  tgt = jnp.pad(target, ((0, num_chunks * chunk * w - hw), (0, 0))).reshape(num_chunks, chunk * w, -1)

  def one(args):
    feats, start = args
    rows = start + jnp.arange(chunk * w, dtype=jnp.int32) // w
    cols = jnp.arange(chunk * w, dtype=jnp.int32) % w
    admissible = src_valid[None, :]
    if window > 0:
      admissible = admissible & (jnp.abs(rows[:, None] - src_rows[None, :]) <= window) \
                               & (jnp.abs(cols[:, None] - src_cols[None, :]) <= window)
    cos = jnp.matmul(feats, sources.T, precision=jax.lax.Precision.HIGHEST)  # TPU's default is bf16 passes
    aff = jnp.where(admissible, jnp.exp(cos / temperature), 0.0)
    # The k-th largest over all sources, in two exact stages (each context frame's top-k, then
    # the top-k of those): several times faster than one top-k over n_ctx·h·w on CPU.
    part = jax.lax.top_k(aff.reshape(chunk * w, n_ctx, hw), min(k, hw))[0].reshape(chunk * w, -1)
    kth = jax.lax.top_k(part, k)[0][:, -1:]
    aff = jnp.where(aff >= kth, aff, 0.0)
    aff = aff / jnp.sum(aff, axis=1, keepdims=True)
    return jnp.matmul(aff, labels, precision=jax.lax.Precision.HIGHEST)

  starts = jnp.arange(num_chunks, dtype=jnp.int32) * chunk
  out = jax.lax.map(one, (tgt, starts))
  return out.reshape(num_chunks * chunk * w, -1)[:hw]


def segment(labels, grid, patch_size: int):
  """Soft labels (h·w, C) -> index map (h·p, w·p): bilinear ×p (half-pixel), per-channel
  min-max of the channels with max > 0 (DINO's norm_mask), argmax."""
  h, w = grid
  up = jax.image.resize(labels.reshape(h, w, -1), (h * patch_size, w * patch_size, labels.shape[-1]), "bilinear")
  shifted = up - up.min(axis=(0, 1))
  norm = jnp.where(up.max(axis=(0, 1)) > 0, shifted / shifted.max(axis=(0, 1)), up)
  return jnp.argmax(norm, axis=-1).astype(jnp.uint8)


@functools.partial(jax.jit, static_argnames=("grid", "patch_size", "window", "topk", "temperature", "chunk"))
def track_step(target, first_feat, first_label, queue_feats, queue_labels, queue_valid, *, grid,
               patch_size, window, topk, temperature, chunk):
  """One frame: propagate from [first frame] + queue, push the frame into the FIFO queue (oldest
  first, padding slots at the front) -> (queue', prediction (h·p, w·p) uint8)."""
  ctx_feats = jnp.concatenate([first_feat[None], queue_feats])
  ctx_labels = jnp.concatenate([first_label[None], queue_labels])
  ctx_valid = jnp.concatenate([jnp.ones((1,), bool), queue_valid])
  labels = propagate(target, ctx_feats, ctx_labels, ctx_valid, grid=grid, window=window, topk=topk,
                     temperature=temperature, chunk=chunk)
  if queue_feats.shape[0]:
    queue_feats = jnp.concatenate([queue_feats[1:], target[None]])
    queue_labels = jnp.concatenate([queue_labels[1:], labels[None]])
    queue_valid = jnp.concatenate([queue_valid[1:], jnp.ones((1,), bool)])
  return (queue_feats, queue_labels, queue_valid), segment(labels, grid, patch_size)


def one_hot(index_map, num_classes: int) -> np.ndarray:
  return (np.asarray(index_map).reshape(-1)[:, None] == np.arange(num_classes)[None, :]).astype(np.float32)


def track(frame_features, first_index_map, *, grid, patch_size: int, n_last_frames: int, window: int,
          topk: int, temperature: float, chunk=None, device=None):
  """Propagate the first frame's labels through a video.

  frame_features: an iterable of (n, h·w, D) L2-normalised feature blocks in frame order (the
  first row of the first block is frame 0); first_index_map (h, w) ints -> yields (frame index,
  prediction (h·p, w·p) uint8) for frames 1..N-1.
  """
  num_classes = int(first_index_map.max()) + 1
  num_classes = -(-num_classes // CLASS_MULTIPLE) * CLASS_MULTIPLE
  first_label = jax.device_put(one_hot(first_index_map, num_classes), device)
  kw = dict(grid=tuple(grid), patch_size=int(patch_size), window=int(window), topk=int(topk),
            temperature=float(temperature), chunk=None if chunk is None else int(chunk))
  first, queue, t = None, None, 0
  for block in frame_features:
    block = jax.device_put(block, device)
    for i in range(block.shape[0]):
      feat = block[i]
      if first is None:
        first = feat
        hw, dim = feat.shape
        queue = (jnp.zeros((n_last_frames, hw, dim), jnp.float32, device=device),
                 jnp.zeros((n_last_frames, hw, num_classes), jnp.float32, device=device),
                 jnp.zeros((n_last_frames,), bool, device=device))
      else:
        queue, pred = track_step(feat, first, first_label, *queue, **kw)
        yield t, pred
      t += 1


###################################################################################################
# The evaluator.
###################################################################################################


def datasets(fields: dict) -> list:
  return [(fields.get("data", "davis/480p"), fields.get("split", "validation"), fields.get("data_dir"))]


def _positive_int(prefix, name, value, minimum):
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ConfigError(f"{prefix}.{name}", value, f"an int >= {minimum}")
  return int(value)


class Evaluator:
  """DINO's DAVIS label propagation, J&F as davis2017-evaluation (module docstring)."""

  def __init__(self, ctx, *, data: str = "davis/480p", split: str = "validation", data_dir=None,
               encoder: str = "online", feature: str = "patch_tokens", short_side: int = 480,
               multiple: int = 64, n_last_frames: int = 7, topk: int = 5, window: int = 12,
               temperature: float = 0.1, chunk: int | None = 8, batch_size: int = 16, mean=MEAN, std=STD,
               max_videos: int | None = None, positions: str = "interpolate"):
    prefix = f"evals.{ctx.name}"
    p = ctx.encoder.patch_size
    if encoder not in common.ENCODERS:
      raise ConfigError(f"{prefix}.encoder", encoder, "'online' or 'ema'")
    feature = feats_lib.check_feature(feature, field=f"{prefix}.feature")
    if feature not in PATCH_FEATURES:
      raise ConfigError(f"{prefix}.feature", feature, f"a per-patch feature, one of {list(PATCH_FEATURES)}")
    self.n_last_frames = _positive_int(prefix, "n_last_frames", n_last_frames, 0)
    self.topk = _positive_int(prefix, "topk", topk, 1)
    self.window = _positive_int(prefix, "window", window, 0)
    self.batch_size = _positive_int(prefix, "batch_size", batch_size, 1)
    self.chunk = None if chunk is None else _positive_int(prefix, "chunk", chunk, 1)
    if max_videos is not None:
      max_videos = _positive_int(prefix, "max_videos", max_videos, 1)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
      raise ConfigError(f"{prefix}.temperature", temperature, "a number > 0 (DINO: 0.1)")
    for name, value in (("short_side", short_side), ("multiple", multiple)):
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < p or value % p:
        raise ConfigError(f"{prefix}.{name}", value, f"a multiple of the patch size {p} (DINO: short_side 480, "
                          "multiple 64)")
    for name, value in (("mean", mean), ("std", std)):
      if len(tuple(value)) != 3 or (name == "std" and min(value) <= 0):
        raise ConfigError(f"{prefix}.{name}", value, "3 numbers (RGB)" + (", all > 0" if name == "std" else ""))
    if positions not in POSITIONS:
      raise ConfigError(f"{prefix}.positions", positions, f"one of {list(POSITIONS)} (DINO: interpolate)")
    self.positions = positions
    channels = ctx.encoder.channels
    if channels != 3:
      raise ConfigError(f"{prefix}.data", data, f"DAVIS frames are RGB; this encoder takes {channels}-channel images")
    self.ctx, self.prefix, self.encoder, self.feature = ctx, prefix, encoder, feature
    self.short_side, self.multiple, self.temperature = int(short_side), int(multiple), float(temperature)
    self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    self.max_videos = max_videos
    self.source = open_dataset(data, split, data_dir, prefix)

  def _features(self, params, frames, size):
    """Feature blocks (n, h·w, D) of a video's frames, `batch_size` frames at a time, sharded
    over the mesh (replicated outputs, left on the device)."""
    mesh = self.ctx.mesh
    fn = inference.jitted(frame_feature_fn(self.ctx.encoder, self.feature, size, self.mean, self.std,
                                           self.positions), mesh)
    step = -(-self.batch_size // mesh.size) * mesh.size
    pc, pi = jax.process_count(), jax.process_index()
    for start in range(0, len(frames), step):
      batch = frames[start:start + step]
      n = len(batch)
      batch = np.concatenate([batch, np.zeros((-n % mesh.size, *batch.shape[1:]), batch.dtype)])
      per = len(batch) // pc
      g = sharding.global_batch({"image": batch[pi * per:(pi + 1) * per].astype(np.float32)}, mesh)
      yield fn(params, g["image"])[:n]

  def evaluate_video(self, params, frames, segs):
    """-> (J (num_objects, N-2), F (num_objects, N-2)) of one video, in [0, 1]."""
    p = self.ctx.encoder.patch_size
    n, height, width = segs.shape
    gt0 = np.where(segs[0] == 255, 0, segs[0])
    num_objects = int(gt0.max())
    th, tw = target_size(height, width, self.short_side, self.multiple)
    if th < p or tw < p:
      raise ConfigError(f"{self.prefix}.short_side", self.short_side,
                        f"a size giving at least one patch for {height}×{width} frames")
    grid = (th // p, tw // p)
    small = resize_nearest(gt0, *grid)
    j = np.zeros((num_objects, max(n - 2, 0)))
    f = np.zeros_like(j)
    device = jax.local_devices()[0]
    preds = track(self._features(params, frames, (th, tw)), small, grid=grid, patch_size=p,
                  n_last_frames=self.n_last_frames, window=self.window, topk=self.topk,
                  temperature=self.temperature, chunk=self.chunk, device=device)
    for t, pred in preds:
      if t >= n - 1:  # the last frame is not scored
        continue
      result = resize_nearest(np.asarray(jax.device_get(pred)), height, width)
      j[:, t - 1], f[:, t - 1] = davis_metrics.frame_scores(result, segs[t], num_objects)
    return j, f

  def run(self, state):
    params = common.encoder_params(state, self.encoder, f"{self.prefix}.encoder")
    t0 = time.perf_counter()
    j_all, f_all = [], []
    count = len(self.source) if self.max_videos is None else min(self.max_videos, len(self.source))
    frames_seen = 0
    for i in range(count):
      name, frames, segs = read_video(self.source[i])
      if len(frames) != len(segs) or frames.shape[1:3] != segs.shape[1:3]:
        raise ValueError(f"{self.prefix}: video {name!r} has {len(frames)} frames {frames.shape[1:3]} "
                         f"but {len(segs)} masks {segs.shape[1:3]}")
      j, f = self.evaluate_video(params, frames, segs)
      j_all += list(j)
      f_all += list(f)
      frames_seen += len(frames)
    scores = davis_metrics.summarize(j_all, f_all)
    log.info("%s: %d videos, %d objects, %d frames in %.1f s (position table: %sd)", self.prefix, count,
             len(j_all), frames_seen, time.perf_counter() - t0, self.positions)
    for key in ("J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay", "JF_mean"):
      yield key, 100.0 * scores[key]
