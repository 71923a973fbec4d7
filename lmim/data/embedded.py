"""What the embedded datasets share: a dataset that ships inside a package (`mnist5k`) or is drawn
from a seed (`shapes10k`) is written on first use as a local TFDS dataset in array_record format,
in the data directory every dataset uses (lmim.data.location). The trainer then reads it exactly
like any prepared TFDS dataset (e.g. imagenet2012), and the default configs run on a machine with
no network and no downloads.

A dataset subclasses `EmbeddedBuilder` (its name, version, image shape, classes and `examples`);
`prepare` builds it once per data directory, safely from several processes at once.
"""
import abc
import contextlib
import fcntl
import hashlib
import io
import logging
import os
import tempfile
import time
from typing import ClassVar, Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lmim.data import location

log = logging.getLogger("lmim")


class EmbeddedBuilder(tfds.core.GeneratorBasedBuilder):
  """A TFDS builder over images made in this process: nothing to download.

  A subclass sets `name`, `VERSION`, `RELEASE_NOTES`, `DESCRIPTION`, `IMAGE_SHAPE`, `SPLITS`,
  either `CLASS_NAMES` or `NUM_CLASSES`, `ORIGIN` (for the log line) and `examples(split)`."""
  DESCRIPTION: ClassVar[str]
  IMAGE_SHAPE: ClassVar[tuple[int, int, int]]
  SPLITS: ClassVar[tuple[str, ...]]
  CLASS_NAMES: ClassVar[tuple[str, ...] | None] = None
  NUM_CLASSES: ClassVar[int | None] = None
  ORIGIN: ClassVar[str]

  @abc.abstractmethod
  def examples(self, split: str) -> Iterator[tuple[int, np.ndarray, int]]:
    """(key, uint8 image (H, W) or (H, W, C), label) for every example of `split`."""

  def _info(self):
    # Defined outside the tfds tree: build DatasetInfo directly (no dataset_info_from_configs).
    label = (tfds.features.ClassLabel(names=list(self.CLASS_NAMES)) if self.CLASS_NAMES
             else tfds.features.ClassLabel(num_classes=self.NUM_CLASSES))
    return tfds.core.DatasetInfo(
        builder=self, description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=self.IMAGE_SHAPE),
                                             "label": label}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split) for split in self.SPLITS}

  def _generate_examples(self, split):
    for key, image, label in self.examples(split):
      buf = io.BytesIO()
      # Encoded PNG bytes: encoding a raw numpy image inside tfds would need TensorFlow.
      Image.fromarray(image).save(buf, format="PNG")
      yield key, {"image": buf.getvalue(), "label": int(label)}


def _lock_path(name: str, data_dir: str) -> str:
  """A lock file beside the data for local dirs; in the temp dir for remote ones (gs://...)."""
  if "://" not in data_dir:
    os.makedirs(data_dir, exist_ok=True)
    return os.path.join(data_dir, f".{name}.lock")
  digest = hashlib.sha1(data_dir.encode()).hexdigest()[:16]
  return os.path.join(tempfile.gettempdir(), f"lmim-{name}-{digest}.lock")


def prepare(builder_cls: type[EmbeddedBuilder], data_dir: str | None = None) -> str:
  """Build the dataset into `data_dir` unless it is there already; returns the data_dir used.

  Safe to call from every process of a run at once: a file lock serialises the builders and the
  one that gets the lock second finds the dataset prepared and returns. TFDS writes into an
  `incomplete.*` directory and renames it to `<data_dir>/<name>/<version>` only when every split
  is written (it deletes the directory if the build raises), so a crash mid-build never leaves a
  dataset that later reads as complete.
  """
  data_dir = location.data_dir(data_dir)
  if builder_cls(data_dir=data_dir, file_format="array_record").is_prepared():
    return data_dir
  name = builder_cls.name
  with open(_lock_path(name, data_dir), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we crash
    builder = builder_cls(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      t0 = time.perf_counter()
      log.info("Preparing the embedded dataset %s in %s %s (nothing is downloaded; once per data "
               "directory).", name, data_dir, builder_cls.ORIGIN)
      try:
        # TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout: untrue here.
        with contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        log.info("Prepared %s in %.1f s.", name, time.perf_counter() - t0)
      except Exception:
        # Another host on a shared filesystem may have finished the same build first.
        if not builder_cls(data_dir=data_dir, file_format="array_record").is_prepared():
          raise
  return data_dir
