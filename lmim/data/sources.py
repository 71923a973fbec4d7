"""Random-access image sources and their statistics.

`open_source(data, split, data_dir)` understands three kinds of `data`:
  'mnist5k'        the embedded default (lmim.data.embedded), prepared on first use
  'folder:<root>'  a local image folder, one subfolder per class; `<root>/<split>/` if it exists,
                   otherwise `<root>` itself is the `train` split
  any other name   a prepared TFDS dataset in array_record format, read with tfds.data_source
Splits accept TFDS slicing (`train[:90%]`, `test[100:200]`) for all three.
A source supports len() and source[i] -> {'image': uint8 (H, W, C), 'label': int}.
"""
import dataclasses
import logging
import os
import re

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lmim.data import embedded
from lmim.errors import ConfigError, DataNotPreparedError

log = logging.getLogger("lmim")

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# Published per-dataset statistics (in [0, 1] units). Grayscale data never gets ImageNet's.
KNOWN_STATS = {
    "mnist5k": ((0.1307,), (0.3081,)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": IMAGENET,
}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class DataInfo:
  name: str
  num_examples: int
  num_classes: int
  channels: int
  mean: tuple
  std: tuple


class TfdsSource:
  """tfds.data_source wrapper yielding uint8 HWC images and int labels."""

  def __init__(self, src):
    self._src = src

  def __len__(self):
    return len(self._src)

  def __getitem__(self, i):
    ex = self._src[int(i)]
    return {"image": np.asarray(ex["image"], np.uint8), "label": int(ex["label"])}


class FolderSource:
  """Images in `<root>/<class>/*.ext`; classes sorted by name are the labels."""

  def __init__(self, files: list[str], labels: list[int], channels: int):
    self.files, self.labels, self.channels = files, labels, channels

  def __len__(self):
    return len(self.files)

  def __getitem__(self, i):
    with Image.open(self.files[int(i)]) as img:
      arr = np.asarray(img.convert("L" if self.channels == 1 else "RGB"), np.uint8)
    return {"image": arr[..., None] if self.channels == 1 else arr, "label": self.labels[int(i)]}


def _split_slice(split: str, n: int, field: str) -> tuple[str, slice]:
  """'train[10%:50%]' -> ('train', slice) over n examples (TFDS's rounding for percents)."""
  m = re.fullmatch(r"(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?", split)
  if not m:
    raise ConfigError(field, split, "a split name with optional [start:stop] slicing, e.g. 'train[:90%]'")

  def bound(tok, default):
    if tok is None:
      return default
    if tok.endswith("%"):
      return int(round(n * int(tok[:-1]) / 100))
    return int(tok)
  return m.group(1), slice(bound(m.group(2), 0), bound(m.group(3), n))


class Sliced:
  def __init__(self, src, sl: slice):
    self._src, self._idx = src, range(len(src))[sl]

  def __len__(self):
    return len(self._idx)

  def __getitem__(self, i):
    return self._src[self._idx[int(i)]]


def _open_tfds(name: str, split: str, data_dir: str | None, field: str):
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError(field, name, "'mnist5k', 'folder:/path/to/images' or the name of a TFDS "
                      "dataset (see `tfds.list_builders()`)") from None
  where = data_dir or tfds.core.constants.DATA_DIR
  how = (f"tfds build {name} --file_format=array_record --data_dir={where}"
         + (" (after placing the ILSVRC2012 tars in <data_dir>/downloads/manual)"
            if name.startswith("imagenet") else ""))
  try:
    src = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except ValueError as e:
    if builder.is_prepared():
      raise ConfigError(field.replace("data", "split"), split, f"a split of {name}: {e}".splitlines()[0]) from None
    raise DataNotPreparedError(f"dataset '{name}' is not prepared in {where}; prepare it with: {how}") from None
  except Exception:  # tfds raises a variety of errors for missing or tfrecord-only datasets
    if not builder.is_prepared():
      raise DataNotPreparedError(f"dataset '{name}' is not prepared in {where}; prepare it with: {how}") from None
    raise DataNotPreparedError(f"dataset '{name}' in {where} is not in array_record format "
                               f"(lmim reads it without TensorFlow); rebuild it with: {how}") from None
  feats = src.dataset_info.features
  channels = int(feats["image"].shape[-1] or 3)
  num_classes = int(feats["label"].num_classes) if "label" in feats else 0
  return TfdsSource(src), channels, num_classes


def _open_folder(root: str, split: str, field: str, channels: int | None):
  name = split.split("[", 1)[0]
  base = os.path.join(root, name) if os.path.isdir(os.path.join(root, name)) else (root if name == "train" else None)
  if base is None or not os.path.isdir(base):
    raise DataNotPreparedError(f"image folder {root} has no split '{name}' (expected {root}/{name}/<class>/ "
                               f"or, for 'train', {root}/<class>/)")
  classes = sorted(d for d in os.listdir(base) if os.path.isdir(os.path.join(base, d)))
  files, labels = [], []
  for label, cls in enumerate(classes):
    for f in sorted(os.listdir(os.path.join(base, cls))):
      if f.lower().endswith(IMAGE_EXTENSIONS):
        files.append(os.path.join(base, cls, f))
        labels.append(label)
  if not files:
    raise DataNotPreparedError(f"image folder {base} holds no images in class subfolders ({', '.join(IMAGE_EXTENSIONS)})")
  if channels is None:
    with Image.open(files[0]) as img:
      channels = 1 if img.mode in ("L", "1", "I;16", "I") else 3
  _, sl = _split_slice(split, len(files), field)
  src = FolderSource(files, labels, channels)
  return (Sliced(src, sl) if (sl.start, sl.stop) != (0, len(files)) else src), channels, len(classes)


def _estimate_stats(src, channels: int, max_examples: int = 1024):
  idx = np.linspace(0, len(src) - 1, min(len(src), max_examples)).astype(int)
  px = np.concatenate([src[i]["image"].reshape(-1, channels) / 255.0 for i in idx])
  return tuple(float(v) for v in px.mean(0)), tuple(float(max(v, 1e-3)) for v in px.std(0))


def open_source(data: str, split: str, data_dir: str | None = None, *, mean=None, std=None,
                field: str = "input.data"):
  """-> (source, DataInfo). Raises DataNotPreparedError / ConfigError with one-line messages."""
  if data == embedded.NAME:
    data_dir = embedded.ensure_prepared(data_dir)
    src, channels, num_classes = _open_tfds(data, split, data_dir, field)
  elif data.startswith("folder:"):
    src, channels, num_classes = _open_folder(data[len("folder:"):], split, field, None)
  else:
    src, channels, num_classes = _open_tfds(data, split, data_dir, field)
  if len(src) == 0:
    raise ConfigError(field.replace("data", "split"), split, f"selects no examples of {data}")
  if mean is None or std is None:
    if data in KNOWN_STATS and len(KNOWN_STATS[data][0]) == channels:
      mean, std = KNOWN_STATS[data]
    elif channels == 3:
      mean, std = IMAGENET
    else:
      mean, std = _estimate_stats(src, channels)
      log.info("Estimated %s statistics: mean %s std %s (set input.mean/std to override).", data, mean, std)
  for key, v in (("input.mean", mean), ("input.std", std)):
    if len(v) != channels:
      raise ConfigError(key, tuple(v), f"one value per channel: {channels} for {data}")
  if any(s <= 0 for s in std):
    raise ConfigError("input.std", tuple(std), "every value must be > 0")
  info = DataInfo(name=data, num_examples=len(src), num_classes=num_classes, channels=channels,
                  mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std))
  return src, info
