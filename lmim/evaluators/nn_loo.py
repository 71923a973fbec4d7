"""The official Latent MIM "NN" metric: leave-one-out 1-NN inside the evaluation split.

Each evaluation image is classified by the label of its most cosine-similar *other* image of the
same split (docs/latent_mim.md §11.1). Two quirks of the official implementation are fixed,
without changing what is measured: every image is counted (the official loader drops the last
partial batch), and the image itself is excluded explicitly (the official code takes the second of the top-2
neighbours, which assumes the image is its own first neighbour; duplicates break that).
Similarities are computed in chunks of queries, so memory is O(chunk · N), not O(N²).

Defaults are the official protocol: online encoder, mean of last-block patch tokens before the
final LayerNorm, g·p pixels after Resize(size/0.875) + CenterCrop, gap 0.
"""
import numpy as np

from lmim.evaluators import common


def loo_1nn_accuracy(features: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> float:
  """Top-1 accuracy (in %) of leave-one-out 1-NN with cosine similarity."""
  f = common.l2_normalize(np.asarray(features, np.float32))
  n = len(f)
  if n < 2:
    raise ValueError(f"leave-one-out 1-NN needs at least 2 examples, got {n}")
  correct = 0
  for start in range(0, n, chunk):
    sims = f[start:start + chunk] @ f.T
    rows = np.arange(sims.shape[0])
    sims[rows, start + rows] = -np.inf
    correct += int((labels[sims.argmax(axis=1)] == labels[start:start + chunk]).sum())
  return 100.0 * correct / n


datasets = common.one_split


class Evaluator:
  def __init__(self, ctx, *, data: str, split: str, data_dir: str | None = None, mean=None, std=None, classes=None,
               batch_size: int = 256, encoder: str = "online", feature: str = "pooled_pre_norm",
               image_size: int | None = None, resize: str = "center_crop"):
    self.spec = common.FeatureSpec(ctx, encoder=encoder, feature=feature, image_size=image_size,
                                   resize=resize, batch_size=batch_size)
    self.source, self.info = common.open_split(ctx, data, split, data_dir, mean, std, classes)

  def run(self, state):
    f, y = self.spec.extract(state, self.source, self.info)
    yield "top1", loo_1nn_accuracy(f, y)
