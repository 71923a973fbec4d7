"""The official Latent MIM "NN" metric: leave-one-out 1-NN inside the evaluation split.

Each evaluation image is classified by the label of its most cosine-similar *other* image of the
same split (spec §11.1). Two quirks of the official implementation are fixed, without changing
what is measured: every image is counted (the official loader drops the last partial batch),
and the image itself is excluded explicitly (the official code takes the second of the top-2
neighbours, which assumes the image is its own first neighbour; duplicates break that).
Similarities are computed in chunks of queries, so memory is O(chunk · N), not O(N²).
"""
import jax
import numpy as np

from lmim import data as lmim_data
from lmim.errors import ConfigError
from lmim.evaluators import features as feats_lib


def loo_1nn_accuracy(features: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> float:
  """Top-1 accuracy (in %) of leave-one-out 1-NN with cosine similarity."""
  f = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
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


class Evaluator:
  def __init__(self, *, method, mesh, data: str, split: str, data_dir: str | None = None,
               batch_size: int = 256, encoder: str = "online", feature: str = "pooled_pre_norm",
               mean=None, std=None):
    if encoder not in ("online", "ema"):
      raise ConfigError("evals.<name>.encoder", encoder, "'online' or 'ema'")
    self.method, self.mesh = method, mesh
    self.encoder, self.feature, self.batch_size = encoder, feats_lib.check_feature(feature), batch_size
    self.source, self.info = lmim_data.open_source(data, split, data_dir, mean=mean, std=std)

  def features(self, state):
    params = state.params["encoder"] if self.encoder == "online" else state.ema_params
    batches = lmim_data.eval_batches(self.source, self.info, image_size=self.method.eval_image_size,
                                     batch_size=self.batch_size, process_index=jax.process_index(),
                                     process_count=jax.process_count())
    return feats_lib.extract(self.method, params, batches, self.mesh, self.feature)

  def run(self, state):
    f, y = self.features(state)
    yield "top1", loo_1nn_accuracy(f, y)
