"""Random-access image sources and the statistics used to normalise them.

`open_source(data, split, data_dir)` understands three kinds of `data`:
  'mnist5k'        the embedded datasets (lmim.data.mnist5k, lmim.data.shapes: 'shapes10k'),
                   prepared on first use
  'folder:<root>'  a local image folder, one subfolder per class (see `open_folder`)
  any other name   a prepared TFDS dataset in array_record format, read with `tfds.data_source`
                   (no TensorFlow needed; tfrecord-only datasets must be rebuilt)
Splits accept TFDS's split syntax for all three (`train[:90%]`, `test[100:200]`, `train+test`).

A source supports len() and source[i] -> {'image': uint8 (H, W, C), 'label': int}; it is safe to
read from several threads and picklable, which is what grain needs.
"""
import dataclasses
import logging
import math
import os
import threading
import types
from typing import Protocol

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lmim.data import location, mnist5k, shapes
from lmim.errors import ConfigError, DataNotPreparedError, first_line

log = logging.getLogger("lmim")


class _MisleadingTfdsLines(logging.Filter):
  """Drops TFDS warnings that are false or not actionable where lmim reads data:
  - 'Variant folder ... has no dataset_info.json': TFDS probing a dataset folder that is being
    built (or not built yet) before it reports 'not prepared' by itself;
  - 'OpenCV is not installed ... Defaulting to PIL': PIL is lmim's chosen decoder (the same one the
    image-folder source uses), not a fallback."""
  DROPPED = ("has no dataset_info.json", "has no features.json", "OpenCV is not installed")

  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(text in message for text in self.DROPPED)


if not any(isinstance(f, _MisleadingTfdsLines) for f in logging.getLogger("absl").filters):
  logging.getLogger("absl").addFilter(_MisleadingTfdsLines())  # TFDS logs through absl's logger

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Published per-dataset statistics in [0, 1] units, looked up by the TFDS name without version or
# config. RGB data not listed gets ImageNet's; other channel counts are estimated from the data,
# so grayscale data never gets ImageNet's statistics.
KNOWN_STATS = {
    "mnist5k": ((0.1307,), (0.3081,)),
    "shapes10k": ((0.4984, 0.4964, 0.4989), (0.2686, 0.2700, 0.2691)),  # its train split
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": IMAGENET_STATS,
}
# The datasets that ship with lmim (built into the data directory on first use): name -> preparer.
EMBEDDED = {mnist5k.NAME: mnist5k.ensure_prepared, shapes.NAME: shapes.ensure_prepared}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_MAX_STAT_EXAMPLES = 1024
_SPLIT_NAMES = ("train", "val", "validation", "test")


@dataclasses.dataclass(frozen=True)
class DataInfo:
  """What the model and the trainer need to know about an opened split."""
  name: str                  # `data` as given in the config
  num_examples: int          # of the opened split (after slicing)
  num_classes: int           # 0 when the dataset has no labels
  channels: int              # 1 for grayscale, 3 for RGB
  mean: tuple[float, ...]    # per channel, [0, 1] units; len == channels
  std: tuple[float, ...]
  class_names: tuple[str, ...] = ()  # of the label ids before any `classes` subset ('' unknown)


class Source(Protocol):
  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> dict: ...
  def labels(self) -> np.ndarray: ...  # every label (N,), cheaper than reading every example


def _undecoded(src):
  """An array_record data source with its images left undecoded (cheap reads of the other
  features); any other source unchanged."""
  from tensorflow_datasets.core.data_sources import array_record  # pylint: disable=import-outside-toplevel
  if isinstance(src, array_record.ArrayRecordDataSource):
    return dataclasses.replace(src, decoders={"image": tfds.decode.SkipDecoding()})
  return src


class TfdsSource:
  """A `tfds.data_source` split as uint8 HWC images and int labels (-1 if it has no labels).

  Without TensorFlow, the array_record data source already decodes images to numpy arrays.
  """

  def __init__(self, src, has_label: bool):
    self._src, self._has_label = src, has_label

  def __len__(self):
    return len(self._src)

  def __getitem__(self, index):
    ex = self._src[int(index)]
    return {"image": np.asarray(ex["image"], np.uint8),
            "label": int(ex["label"]) if self._has_label else -1}

  def labels(self, chunk: int = 4096) -> np.ndarray:
    """Every label of the split (N,) int64, read without decoding the images where the records
    allow it (array_record with a SkipDecoding image decoder); -1 without labels."""
    if not self._has_label:
      return np.full(len(self), -1, np.int64)
    try:  # array_record records parsed with the image left undecoded: labels only
      raw = _undecoded(self._src)
      if raw is not self._src:
        return np.asarray([int(ex["label"]) for start in range(0, len(raw), chunk)
                           for ex in raw.__getitems__(range(start, min(start + chunk, len(raw))))], np.int64)
    except Exception as e:  # pylint: disable=broad-except  # (mocked or unusual sources)
      log.info("labels read by decoding every example (%s)", first_line(e))
    return np.asarray([self[i]["label"] for i in range(len(self))], np.int64)


  def file_names(self, chunk: int = 4096) -> list[str]:
    """Every record's file name (the dataset's `file_name` or `image/file_name` feature; '' where
    it has none), read without decoding the images where the records allow it."""
    src = _undecoded(self._src)

    def name(ex):
      v = ex.get("file_name", ex.get("image/file_name", ""))
      return v.decode() if isinstance(v, bytes) else str(v)
    if hasattr(src, "__getitems__"):
      return [name(ex) for start in range(0, len(src), chunk)
              for ex in src.__getitems__(range(start, min(start + chunk, len(src))))]
    return [name(src[i]) for i in range(len(src))]


class FolderSource:
  """Image files with their labels, decoded by PIL to RGB (or 'L' when channels == 1)."""

  def __init__(self, files: list[str], labels: list[int], channels: int):
    self.files, self.label_ids, self.channels = files, labels, channels

  def __len__(self):
    return len(self.files)

  def labels(self) -> np.ndarray:
    """Every label of the split (N,) int64, from the folder names (no image is read)."""
    return np.asarray(self.label_ids, np.int64)

  def __getitem__(self, index):
    index = int(index)
    with Image.open(self.files[index]) as img:
      arr = np.asarray(img.convert("L" if self.channels == 1 else "RGB"), np.uint8)
    return {"image": arr[..., None] if self.channels == 1 else arr, "label": self.label_ids[index]}


###################################################################################################
# TFDS datasets (including the embedded mnist5k).
###################################################################################################


def tfds_data_source(name: str, split: str, data_dir: str | None, prefix: str,
                     unknown_hint: str = "'mnist5k', 'folder:/path/to/images' or the name of a TFDS "
                                         "dataset (see tfds.list_builders())"):
  """A prepared TFDS split -> (`tfds.data_source` (array_record, no TensorFlow needed), its
  DatasetInfo).

  Every failure is one line: an unknown name or split (ConfigError naming `<prefix>.data|split`),
  or data that is not prepared or not in array_record format (DataNotPreparedError with the
  command that prepares it here: lmim.data.location.how_to_prepare). `data_dir` None means the
  data directory every dataset uses (lmim.data.location).
  """
  data_dir = location.data_dir(data_dir)
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(f"{prefix}.data", name, unknown_hint) from None
  except Exception as e:  # e.g. an unknown version or config of a known dataset
    raise ConfigError(f"{prefix}.data", name, f"not a usable TFDS dataset: {first_line(e)}") from None
  where = os.fspath(builder.data_dir_root)
  how = location.how_to_prepare(name, where)
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False), builder.info
  except Exception as e:  # tfds raises ValueError, NotImplementedError, ... depending on the case
    if not builder.is_prepared():
      raise DataNotPreparedError(f"dataset '{name}' (split '{split}') is not prepared in {where}; "
                                 f"prepare it with: {how}") from None
    if isinstance(e, ValueError):  # prepared, so the split spec is what is wrong
      raise ConfigError(f"{prefix}.split", split, f"a split of {name}: {first_line(e)}") from None
    raise DataNotPreparedError(f"dataset '{name}' in {where} is not in array_record format (lmim "
                               f"reads it without TensorFlow); rebuild it with: {how}") from None


def _open_tfds(name: str, split: str, data_dir: str | None, prefix: str):
  """-> (TfdsSource, channels, class names); unprepared data raises one line saying how to build."""
  src, info = tfds_data_source(name, split, data_dir, prefix)
  features = info.features
  if "image" not in features:
    raise ConfigError(f"{prefix}.data", name, f"a dataset with an 'image' feature (it has {list(features)})")
  channels = int(features["image"].shape[-1] or 3)
  has_label = "label" in features
  names = []
  if has_label:
    label = features["label"]
    names = list(getattr(label, "names", None) or [str(i) for i in range(int(getattr(label, "num_classes", 0) or 0))])
  return TfdsSource(src, has_label), channels, names


###################################################################################################
# Image folders.
###################################################################################################


def list_dirs(path: str) -> list[str]:
  """Sorted non-hidden subfolders of `path` ([] if it is not a folder)."""
  if not os.path.isdir(path):
    return []
  return sorted(d for d in os.listdir(path) if not d.startswith(".") and os.path.isdir(os.path.join(path, d)))


def _list_images(path: str) -> list[str]:
  """Image files under a class folder, nested folders included (Tiny-ImageNet keeps its training
  images in `<class>/images/`), as sorted paths relative to `path`."""
  found = []
  for dirpath, dirnames, filenames in os.walk(path):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    found += [os.path.relpath(os.path.join(dirpath, f), path) for f in filenames
              if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(found)


@dataclasses.dataclass(frozen=True)
class FolderListing:
  """Every image of an image folder: class names, and per split (files, labels)."""
  root: str
  classes: list[str]
  splits: dict[str, tuple[list[str], list[int]]]
  split_layout: bool            # `<root>/<split>/<class>/` (else `<root>/<class>/` = train)

  @property
  def channels(self) -> int:
    """1 if every one of up to 16 evenly spaced images (over all splits) is grayscale, else 3."""
    files = [f for fs, _ in self.splits.values() for f in fs]
    return _channels(files)


def _channels(files: list[str]) -> int:
  if not files:
    return 3
  probe = np.unique(np.linspace(0, len(files) - 1, min(16, len(files))).round().astype(int))
  gray = True
  for i in probe:
    with Image.open(files[i]) as img:
      gray = gray and img.mode in _GRAY_MODES
  return 1 if gray else 3


def list_folder(root: str, split_names=None) -> FolderListing:
  """The image folder at `root`: `<root>/<split>/<class>/*.png` when a requested split folder exists
  (every non-hidden subfolder of root is then a split), otherwise `<root>/<class>/*.png` is the
  `train` split. Class ids are the sorted class names over ALL splits, so `train` and `val` agree
  on labels even if one of them lacks a class. `split_names` (default: every split) limits which
  splits' files are listed."""
  if not os.path.isdir(root):
    raise DataNotPreparedError(f"image folder {root} does not exist (expected {root}/<class>/*.png "
                               f"or {root}/<split>/<class>/*.png)")
  subdirs = list_dirs(root)
  wanted = [n for n in (split_names or []) if n != "all"]
  # A split layout when a requested split exists as a folder; listing everything, when a subfolder
  # has a split's usual name.
  split_layout = (any(os.path.isdir(os.path.join(root, n)) for n in wanted) if wanted else
                  any(d in _SPLIT_NAMES for d in subdirs))
  split_dirs = {d: os.path.join(root, d) for d in subdirs} if split_layout else {"train": root}
  for n in wanted:
    if n not in split_dirs:
      raise DataNotPreparedError(f"image folder {root} has no split '{n}' (expected {root}/{n}/<class>/ "
                                 f"or, for 'train' alone, {root}/<class>/)")
  classes = sorted({c for d in split_dirs.values() for c in list_dirs(d)})
  splits = {}
  for n in (wanted if wanted and "all" not in (split_names or []) else split_dirs):
    files, labels = [], []
    for label, cls in enumerate(classes):
      cls_dir = os.path.join(split_dirs[n], cls)
      if os.path.isdir(cls_dir):
        found = _list_images(cls_dir)
        files += [os.path.join(cls_dir, f) for f in found]
        labels += [label] * len(found)
    splits[n] = (files, labels)
  return FolderListing(root, classes, splits, split_layout)


def open_folder(root: str, split: str, prefix: str = "input"):
  """A local image folder (layouts: `list_folder`) -> (FolderSource, channels, num_classes).
  `split` takes TFDS's split syntax. Channels: 1 if every one of up to 16 evenly spaced images of
  the selection is grayscale, else 3 (everything decoded as RGB)."""
  field = f"{prefix}.split"
  if not os.path.isdir(root):
    raise DataNotPreparedError(f"image folder {root} does not exist (expected {root}/<class>/*.png "
                               f"or {root}/<split>/<class>/*.png)")
  try:
    instruction = tfds.core.ReadInstruction.from_spec(split)
  except ValueError as e:
    raise ConfigError(field, split, first_line(e)) from None
  names = [part.split("[", 1)[0].strip() for part in split.split("+")]
  listing = list_folder(root, names)
  infos = {n: types.SimpleNamespace(num_examples=len(f), shard_lengths=[len(f)])
           for n, (f, _) in listing.splits.items()}
  try:
    parts = instruction.to_absolute(infos)
  except ValueError as e:
    raise ConfigError(field, split, first_line(e)) from None
  sel_files, sel_labels = [], []
  for p in parts:
    files, labels = listing.splits[p.splitname]
    sel_files += files[p.from_:p.to]
    sel_labels += labels[p.from_:p.to]
  if not sel_files:
    raise DataNotPreparedError(f"image folder {root} has no images for split '{split}' in class "
                               f"subfolders ({', '.join(IMAGE_EXTENSIONS)})")
  channels = _channels(sel_files)
  return FolderSource(sel_files, sel_labels, channels), channels, list(listing.classes)


###################################################################################################
# Class subsets (ImageNet-100 = ImageNet-1k restricted to CMC's 100 classes).
###################################################################################################

CLASS_LISTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "class_lists")


def class_list_names() -> list[str]:
  """The class lists shipped with lmim (`classes='imagenet100'`)."""
  return sorted(f[:-4] for f in os.listdir(CLASS_LISTS) if f.endswith(".txt"))


def read_class_spec(spec, field: str) -> list:
  """`classes` as written in a config -> a list of class names (str) or ids (int).

  A shipped list's name ('imagenet100'), a text file (one class per line, '#' comments), or a
  list/tuple of names or ids."""
  if isinstance(spec, str):
    path = os.path.join(CLASS_LISTS, f"{spec}.txt") if spec in class_list_names() else os.path.expanduser(spec)
    if not os.path.isfile(path):
      raise ConfigError(field, spec, f"a class list shipped with lmim ({', '.join(class_list_names())}), a "
                        "text file with one class per line, or a list of class names or ids")
    with open(path, encoding="utf-8") as f:
      items = [line.split("#", 1)[0].strip() for line in f]
    return [i for i in items if i]
  if isinstance(spec, (list, tuple)) and spec:
    return list(spec)
  raise ConfigError(field, spec, "a non-empty list of class names or ids, a file, or a shipped list name")


class ClassSubset:
  """The examples of `source` whose label is one of `kept` (original ids, sorted), relabelled
  0..K-1 in that order: the label space an image folder of just those classes would have."""

  def __init__(self, source, kept: list[int]):
    labels = source.labels()
    self.source, self.kept = source, kept
    self._remap = {old: new for new, old in enumerate(kept)}
    self.indices = np.flatnonzero(np.isin(labels, kept))
    self._labels = np.asarray([self._remap[int(l)] for l in labels[self.indices]], np.int64)

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, index):
    ex = dict(self.source[int(self.indices[int(index)])])
    ex["label"] = self._remap[int(ex["label"])]
    return ex

  def labels(self) -> np.ndarray:
    return self._labels


def select_classes(src, class_names: list[str], spec, field: str):
  """`src` restricted to the classes `spec` names (see read_class_spec) -> (subset, K)."""
  wanted = read_class_spec(spec, field)
  index = {name: i for i, name in enumerate(class_names)}
  kept, unknown = set(), []
  for c in wanted:
    if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(class_names):
      kept.add(int(c))
    elif str(c) in index:
      kept.add(index[str(c)])
    else:
      unknown.append(c)
  if unknown:
    raise ConfigError(field, spec, f"classes of the dataset ({len(class_names)} classes, e.g. "
                      f"{', '.join(class_names[:3])}); not among them: {', '.join(map(str, unknown[:5]))}"
                      + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
  return ClassSubset(src, sorted(kept)), len(kept)


###################################################################################################
# Normalisation statistics.
###################################################################################################

_estimates: dict = {}
_estimates_lock = threading.Lock()


def estimate_stats(src, channels: int, max_examples: int = _MAX_STAT_EXAMPLES):
  """Per-channel mean/std in [0, 1] units over up to `max_examples` evenly spaced examples."""
  idx = np.unique(np.linspace(0, len(src) - 1, min(len(src), max_examples)).round().astype(np.int64))
  total, total_sq, count = np.zeros(channels), np.zeros(channels), 0
  for i in idx:
    px = src[int(i)]["image"].reshape(-1, channels).astype(np.float64) / 255.0
    total += px.sum(0)
    total_sq += np.square(px).sum(0)
    count += len(px)
  mean = total / count
  std = np.sqrt(np.maximum(total_sq / count - np.square(mean), 0.0))
  # A constant channel would divide by zero: leave it unscaled.
  return tuple(float(m) for m in mean), tuple(float(s) if s > 1e-6 else 1.0 for s in std)


def _default_stats(data: str, split: str, data_dir, src, channels: int, prefix: str, classes=None):
  """Published statistics, else ImageNet's for RGB, else estimated once per (data, split, dir)."""
  known = KNOWN_STATS.get(data.split(":")[0].split("/")[0])
  if known is not None and len(known[0]) == channels:
    return known
  if channels == 3:
    return IMAGENET_STATS
  key = (data, split, data_dir, channels, repr(classes))
  with _estimates_lock:
    if key not in _estimates:
      _estimates[key] = estimate_stats(src, channels)
      log.info("No published statistics for %s (%d channel(s)): estimated mean %s, std %s from up "
               "to %d examples of '%s' (set %s.mean/%s.std to override).", data, channels,
               _estimates[key][0], _estimates[key][1], _MAX_STAT_EXAMPLES, split, prefix, prefix)
    return _estimates[key]


def _check_stat(field: str, value, channels: int, data: str, positive: bool) -> tuple[float, ...]:
  try:
    values = tuple(float(v) for v in value)
  except (TypeError, ValueError):
    raise ConfigError(field, value, f"a tuple of {channels} float(s), one per channel of {data}") from None
  if len(values) != channels:
    raise ConfigError(field, value, f"one value per channel: {channels} for {data}")
  if not all(math.isfinite(v) and (v > 0 or not positive) for v in values):
    raise ConfigError(field, value, "finite values" + (", each > 0" if positive else ""))
  return values


###################################################################################################
# Entry point.
###################################################################################################


def open_source(data: str, split: str, data_dir: str | None = None, *, mean=None, std=None, classes=None,
                config_prefix: str = "input") -> tuple[Source, DataInfo]:
  """-> (source, DataInfo) for one split.

  `classes` (None = all) keeps the examples of a class subset, relabelled 0..K-1 in sorted order
  of the original ids (read_class_spec: 'imagenet100', a file, or a list): train and evaluation
  splits opened with the same `classes` share one label space. `mean`/`std` given explicitly win
  over the defaults (each independently); errors are one line naming
  `<config_prefix>.data|split|classes|mean|std` (ConfigError) or saying how to prepare the data
  (DataNotPreparedError).
  """
  if not isinstance(data, str) or not data:
    raise ConfigError(f"{config_prefix}.data", data,
                      "'mnist5k', 'folder:/path/to/images' or a TFDS dataset name")
  if data in EMBEDDED:
    data_dir = EMBEDDED[data](data_dir)
    src, channels, class_names = _open_tfds(data, split, data_dir, config_prefix)
  elif data.startswith("folder:"):
    root = data[len("folder:"):]
    if not root:
      raise ConfigError(f"{config_prefix}.data", data,
                        "'folder:<root>' with <root> a directory of class subfolders")
    src, channels, class_names = open_folder(os.path.expanduser(root), split, config_prefix)
  else:
    src, channels, class_names = _open_tfds(data, split, data_dir, config_prefix)
  num_classes = len(class_names)
  if classes is not None:
    src, num_classes = select_classes(src, class_names, classes, f"{config_prefix}.classes")
  if len(src) == 0:
    raise ConfigError(f"{config_prefix}.split", split, f"a split with at least one example of {data}")
  if mean is None or std is None:
    default_mean, default_std = _default_stats(data, split, data_dir, src, channels, config_prefix, classes)
    mean = default_mean if mean is None else mean
    std = default_std if std is None else std
  mean = _check_stat(f"{config_prefix}.mean", mean, channels, data, positive=False)
  std = _check_stat(f"{config_prefix}.std", std, channels, data, positive=True)
  info = DataInfo(name=data, num_examples=len(src), num_classes=num_classes, channels=channels,
                  mean=mean, std=std, class_names=tuple(str(n) for n in class_names))
  return src, info
