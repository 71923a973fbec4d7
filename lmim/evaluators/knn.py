"""Weighted k-NN classification, the DINO protocol (docs/methods.md §4a): a bank of train features,
queries from the evaluation split.

    score(c) = Σ_{j ∈ top-k(q)} exp(cos(q, b_j) / T) · [label_j = c]      k = 20, T = 0.07
Reported for every k in `k` (DINO sweeps 10, 20, 100, 200; 20 "usually works best"), plus the
plain train → val 1-NN. Defaults follow DINO: CLS after the final LayerNorm, L2-normalised.

Memory is bounded: queries are processed in chunks and, for each chunk, the bank is scanned in
chunks with a running top-k, so the (queries × bank) similarity matrix never exists.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np

from lmim.errors import ConfigError
from lmim.evaluators import common


@functools.partial(jax.jit, static_argnames=("k", "bank_chunk"))
def topk_neighbours(queries, bank, bank_valid, k: int, bank_chunk: int):
  """Cosine top-k of each query over a bank, scanning the bank in chunks.

  queries (Q, D), bank (N, D) with N a multiple of bank_chunk, bank_valid (N,) bool (padding) ->
  (similarities (Q, k), indices (Q, k)), best first.
  """
  q = queries / jnp.maximum(jnp.linalg.norm(queries, axis=-1, keepdims=True), 1e-12)
  chunks = bank.reshape(-1, bank_chunk, bank.shape[-1])
  valid = bank_valid.reshape(-1, bank_chunk)

  def step(carry, xs):
    best_s, best_i = carry
    b, v, start = xs
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    s = jnp.where(v[None, :], q @ b.T, -jnp.inf)
    s_top, i_top = jax.lax.top_k(s, min(k, bank_chunk))
    s_all = jnp.concatenate([best_s, s_top], axis=1)
    i_all = jnp.concatenate([best_i, i_top + start], axis=1)
    s_new, pick = jax.lax.top_k(s_all, k)
    return (s_new, jnp.take_along_axis(i_all, pick, axis=1)), None

  init = (jnp.full((q.shape[0], k), -jnp.inf), jnp.zeros((q.shape[0], k), jnp.int32))
  starts = jnp.arange(chunks.shape[0], dtype=jnp.int32) * bank_chunk
  (s, i), _ = jax.lax.scan(step, init, (chunks, valid, starts))
  return s, i


def knn_predict(queries, bank, bank_labels, num_classes: int, ks, temperature: float,
                query_chunk: int = 1024, bank_chunk: int = 4096) -> dict:
  """{k: predicted labels (Q,)} for DINO's weighted vote; host arrays in, host arrays out."""
  kmax = max(ks)
  n = len(bank)
  if kmax > n:
    raise ConfigError("k", kmax, f"at most the bank size {n}")
  bank_chunk = min(bank_chunk, max(kmax, n))
  pad = -n % bank_chunk
  bank_p = np.concatenate([bank, np.zeros((pad, bank.shape[1]), bank.dtype)]).astype(np.float32)
  valid = np.concatenate([np.ones(n, bool), np.zeros(pad, bool)])
  bank_j, valid_j = jnp.asarray(bank_p), jnp.asarray(valid)
  preds = {k: [] for k in ks}
  for start in range(0, len(queries), query_chunk):
    q = jnp.asarray(queries[start:start + query_chunk], jnp.float32)
    sims, idx = topk_neighbours(q, bank_j, valid_j, kmax, bank_chunk)
    sims, idx = np.asarray(sims), np.asarray(idx)
    labels = bank_labels[idx]                                       # (q, kmax)
    for k in ks:
      weights = np.exp(sims[:, :k] / temperature)
      votes = np.zeros((len(labels), num_classes))
      np.add.at(votes, (np.arange(len(labels))[:, None], labels[:, :k]), weights)
      preds[k].append(votes.argmax(1))
  return {k: np.concatenate(v) for k, v in preds.items()}


datasets = common.train_and_eval_splits


class Evaluator:
  def __init__(self, ctx, *, data: str, split: str, train_split: str = "train", data_dir=None,
               mean=None, std=None, classes=None, k=(20,), temperature: float = 0.07, batch_size: int = 256,
               encoder: str = "online", feature: str = "cls", image_size=None,
               resize: str = "center_crop", query_chunk: int = 1024, bank_chunk: int = 4096):
    self.ks = tuple(int(x) for x in (k if isinstance(k, (tuple, list)) else (k,)))
    if not self.ks or min(self.ks) < 1:
      raise ConfigError(f"evals.{ctx.name}.k", k, "one or more integers >= 1")
    if not temperature > 0:
      raise ConfigError(f"evals.{ctx.name}.temperature", temperature, "must be > 0")
    self.temperature, self.query_chunk, self.bank_chunk = temperature, query_chunk, bank_chunk
    self.spec = common.FeatureSpec(ctx, encoder=encoder, feature=feature, image_size=image_size,
                                   resize=resize, batch_size=batch_size)
    self.bank_src, self.bank_info = common.open_split(ctx, data, train_split, data_dir, mean, std, classes)
    self.query_src, self.query_info = common.open_split(ctx, data, split, data_dir, mean, std, classes)

  def run(self, state):
    bank, bank_y = self.spec.extract(state, self.bank_src, self.bank_info)
    queries, y = self.spec.extract(state, self.query_src, self.query_info)
    num_classes = int(max(self.bank_info.num_classes, bank_y.max() + 1, y.max() + 1))
    ks = tuple(sorted(set(self.ks) | {1}))
    preds = knn_predict(queries, bank, bank_y, num_classes, ks, self.temperature,
                        self.query_chunk, self.bank_chunk)
    for k in self.ks:
      yield f"top1_k{k}", 100.0 * float(np.mean(preds[k] == y))
    yield "top1_1nn", 100.0 * float(np.mean(preds[1] == y))
