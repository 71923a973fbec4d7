"""Weighted k-NN classification, the DINO protocol (docs/methods.md §4a): a bank of train features,
queries from the evaluation split.

    score(c) = Σ_{j ∈ top-k(q)} exp(cos(q, b_j) / T) · [label_j = c]      k = 20, T = 0.07
Reported for every k in `k` (DINO sweeps 10, 20, 100, 200; 20 "usually works best"), plus the
plain train → val 1-NN. Defaults follow DINO: CLS after the final LayerNorm, L2-normalised.

Memory is bounded and the bank never visits the host: each extraction batch's features are
written, as computed and still sharded over the mesh, into a (batches, rows, D) device buffer split
over the devices by rows (ShardedBank: each device holds 1/devices of the bank, no host copy; only
the labels, 8 bytes per image, are on the host). Queries are processed in chunks; each device
scans its slice of the bank with a running top-k, and the devices' top-k lists are gathered and
merged, so neither the (queries × bank) similarity matrix nor a whole bank on one device exists.
`python -m lmim.evaluators.knn --bank N --dim D` measures the bytes per device and the peak host
memory of building and searching a bank of N (README, "Probing").
"""
import functools
import logging
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from lmim import data as lmim_data
from lmim import inference, sharding
from lmim.errors import ConfigError
from lmim.evaluators import common, features as feats_lib


def _scan_topk(q, chunks, valid, row_ids, k: int):
  """Running cosine top-k of L2-normalised queries q (Q, D) over bank chunks (n, R, D) with validity
  (n, R) and the id each row reports (n, R) -> (similarities (Q, k), ids (Q, k)), best first."""
  def step(carry, xs):
    best_s, best_i = carry
    b, v, ids = xs
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    s = jnp.where(v[None, :], jnp.matmul(q, b.T, precision=jax.lax.Precision.HIGHEST), -jnp.inf)
    s_top, j_top = jax.lax.top_k(s, min(k, b.shape[0]))
    s_all = jnp.concatenate([best_s, s_top], axis=1)
    i_all = jnp.concatenate([best_i, ids[j_top]], axis=1)
    s_new, pick = jax.lax.top_k(s_all, k)
    return (s_new, jnp.take_along_axis(i_all, pick, axis=1)), None

  init = (jnp.full((q.shape[0], k), -jnp.inf), jnp.zeros((q.shape[0], k), jnp.int32))
  (s, i), _ = jax.lax.scan(step, init, (chunks, valid, row_ids))
  return s, i


def _normalise(x):
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=("k", "bank_chunk"))
def topk_neighbours(queries, bank, bank_valid, k: int, bank_chunk: int):
  """Cosine top-k of each query over a bank, scanning the bank in chunks.

  queries (Q, D), bank (N, D) with N a multiple of bank_chunk, bank_valid (N,) bool (padding) ->
  (similarities (Q, k), indices (Q, k)), best first.
  """
  rows = jnp.arange(bank.shape[0], dtype=jnp.int32).reshape(-1, bank_chunk)
  return _scan_topk(_normalise(queries), bank.reshape(-1, bank_chunk, bank.shape[-1]),
                    bank_valid.reshape(-1, bank_chunk), rows, k)


def knn_predict(queries, bank, bank_labels, num_classes: int, ks, temperature: float,
                query_chunk: int = 1024, bank_chunk: int = 4096) -> dict:
  """{k: predicted labels (Q,)} for DINO's weighted vote; host arrays in, host arrays out, the
  bank on one device (the reference the sharded search is tested against)."""
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
    chunk_preds = vote(np.asarray(sims), bank_labels[np.asarray(idx)], num_classes, ks, temperature)
    for k in ks:
      preds[k].append(chunk_preds[k])
  return {k: np.concatenate(v) for k, v in preds.items()}


class ShardedBank:
  """A feature bank on the devices: `feats` (batches, rows, D) float32 sharded over the mesh by
  rows, `labels` and `valid` (batches·rows,) on the host, in the same (extraction) order; padded
  rows are invalid. Built batch by batch from an eval stream with no host copy of the features."""

  def __init__(self, feats, labels: np.ndarray, valid: np.ndarray):
    self.feats, self.labels, self.valid = feats, labels, valid

  def __len__(self):
    return int(self.valid.sum())

  @staticmethod
  def build(fn, params, batches, num_batches: int, mesh) -> "ShardedBank":
    """`fn(params, images) -> (B, D)` over `num_batches` process-local eval batches."""
    rows_sharding = NamedSharding(mesh, P(None, sharding.BATCH_AXES))
    per_process = max(1, mesh.size // jax.process_count())
    features = jax.jit(lambda p, x: fn(p, x).astype(jnp.float32), out_shardings=sharding.batch_sharding(mesh))
    write = jax.jit(lambda buf, f, i: jax.lax.dynamic_update_index_in_dim(buf, f, i, 0),
                    donate_argnums=0, out_shardings=rows_sharding)
    buf, labels, valid = None, [], []
    for i, batch in enumerate(batches):
      batch = inference.pad_rows({k: batch[k] for k in ("image", "label", "mask")}, per_process)
      g = sharding.global_batch(batch, mesh)
      f = features(params, g["image"])
      if buf is None:
        buf = jax.jit(lambda: jnp.zeros((num_batches, *f.shape), jnp.float32), out_shardings=rows_sharding)()
      elif f.shape != buf.shape[1:]:
        raise ValueError(f"batch {i} has {f.shape[0]} rows, the bank {buf.shape[1]}: eval batches must be equal")
      buf = write(buf, f, i)
      labels.append(np.asarray(jax.device_get(inference.replicate(g["label"], mesh))))
      valid.append(np.asarray(jax.device_get(inference.replicate(g["mask"], mesh))))
    return ShardedBank(buf, np.concatenate(labels).astype(np.int64), np.concatenate(valid))

  def centred(self) -> "ShardedBank":
    """The bank minus the mean of its valid rows, on the devices (feature='pixels' compares
    deviations from the split's mean, as lmim.evaluators.features.extract does)."""
    valid = jax.device_put(self.valid.reshape(self.feats.shape[:2]), self.feats.sharding)
    mean = jnp.sum(jnp.where(valid[..., None], self.feats, 0.0), axis=(0, 1)) / int(self.valid.sum())
    return ShardedBank(jax.jit(lambda f, m: f - m, out_shardings=self.feats.sharding)(self.feats, mean),
                       self.labels, self.valid)

  def bytes_per_device(self) -> int:
    return max(s.data.nbytes for s in self.feats.addressable_shards)


@functools.lru_cache(maxsize=8)
def _sharded_topk_fn(mesh, k: int):
  """jit(q (Q, D) replicated, bank (nb, R, D) row-sharded, valid (nb, R) row-sharded) -> (sims,
  global row ids) (Q, k), best first: every device scans its own rows with a running top-k, then
  the devices' lists are gathered and merged."""
  axes = sharding.BATCH_AXES

  def local(q, bank, valid):
    nb, r_local, _ = bank.shape
    shard = jax.lax.axis_index(axes)
    r_global = r_local * jax.lax.psum(1, axes)
    # each local row reports its row in the (nb·R) extraction order
    rows = (jnp.arange(nb, dtype=jnp.int32)[:, None] * r_global + shard * r_local
            + jnp.arange(r_local, dtype=jnp.int32)[None, :])
    s, i = _scan_topk(_normalise(q), bank, valid, rows, k)
    s_all = jax.lax.all_gather(s, axes, axis=1, tiled=True)   # (Q, k·devices)
    i_all = jax.lax.all_gather(i, axes, axis=1, tiled=True)
    s_top, pick = jax.lax.top_k(s_all, k)
    return s_top, jnp.take_along_axis(i_all, pick, axis=1)

  fn = jax.shard_map(local, mesh=mesh, in_specs=(P(), P(None, axes), P(None, axes)), out_specs=(P(), P()),
                     check_vma=False)
  return jax.jit(fn)


def knn_predict_sharded(queries, bank: ShardedBank, num_classes: int, ks, temperature: float, mesh,
                        query_chunk: int = 1024) -> dict:
  """{k: predicted labels (Q,)}: DINO's weighted vote over a ShardedBank; queries on the host."""
  kmax = max(ks)
  if kmax > len(bank):
    raise ConfigError("k", kmax, f"at most the bank size {len(bank)}")
  if kmax > bank.feats.shape[1] // mesh.size * bank.feats.shape[0]:
    raise ConfigError("k", kmax, "at most the rows each device holds")
  fn = _sharded_topk_fn(mesh, kmax)
  valid = jax.device_put(bank.valid.reshape(bank.feats.shape[:2]), bank.feats.sharding)
  repl = sharding.replicated(mesh)
  preds = {k: [] for k in ks}
  for start in range(0, len(queries), query_chunk):
    chunk = np.asarray(queries[start:start + query_chunk], np.float32)
    n = len(chunk)
    chunk = np.concatenate([chunk, np.zeros((-n % query_chunk if len(queries) > query_chunk else 0,
                                             chunk.shape[1]), np.float32)])  # one compiled shape
    q = jax.make_array_from_callback(chunk.shape, repl, lambda idx, c=chunk: c[idx])
    sims, idx = fn(q, bank.feats, valid)
    sims, idx = np.asarray(jax.device_get(sims))[:n], np.asarray(jax.device_get(idx))[:n]
    preds_chunk = vote(sims, bank.labels[idx], num_classes, ks, temperature)
    for k in ks:
      preds[k].append(preds_chunk[k])
  return {k: np.concatenate(v) for k, v in preds.items()}


def vote(sims, labels, num_classes: int, ks, temperature: float) -> dict:
  """DINO's weighted vote: score(c) = Σ_top-k exp(sim / T)·[label = c] -> {k: argmax (Q,)}."""
  out = {}
  for k in ks:
    weights = np.exp(sims[:, :k].astype(np.float64) / temperature)
    votes = np.zeros((len(labels), num_classes))
    np.add.at(votes, (np.arange(len(labels))[:, None], labels[:, :k]), weights)
    out[k] = votes.argmax(1)
  return out


datasets = common.train_and_eval_splits


class Evaluator:
  def __init__(self, ctx, *, data: str, split: str, train_split: str = "train", data_dir=None,
               mean=None, std=None, classes=None, k=(20,), temperature: float = 0.07, batch_size: int = 256,
               encoder: str = "online", feature: str = "cls", image_size=None,
               resize: str = "center_crop", query_chunk: int = 1024):
    self.ks = tuple(int(x) for x in (k if isinstance(k, (tuple, list)) else (k,)))
    if not self.ks or min(self.ks) < 1:
      raise ConfigError(f"evals.{ctx.name}.k", k, "one or more integers >= 1")
    if not temperature > 0:
      raise ConfigError(f"evals.{ctx.name}.temperature", temperature, "must be > 0")
    self.ctx, self.temperature, self.query_chunk = ctx, temperature, query_chunk
    self.spec = common.FeatureSpec(ctx, encoder=encoder, feature=feature, image_size=image_size,
                                   resize=resize, batch_size=batch_size)
    self.bank_src, self.bank_info = common.open_split(ctx, data, train_split, data_dir, mean, std, classes)
    self.query_src, self.query_info = common.open_split(ctx, data, split, data_dir, mean, std, classes)

  def bank(self, state) -> ShardedBank:
    spec, ctx = self.spec, self.ctx
    batches = lmim_data.eval_batches(self.bank_src, self.bank_info, image_size=spec.image_size,
                                     batch_size=spec.batch_size, resize=spec.resize,
                                     process_index=jax.process_index(), process_count=jax.process_count())
    t0 = time.perf_counter()
    bank = ShardedBank.build(feats_lib.feature_fn(ctx.encoder, spec.feature), spec.params(state), batches,
                             lmim_data.num_eval_batches(len(self.bank_src), spec.batch_size, jax.process_count()),
                             ctx.mesh)
    if spec.feature == "pixels":
      bank = bank.centred()
    seconds = max(time.perf_counter() - t0, 1e-9)
    logging.getLogger("lmim").info("%s: bank of %d images in %.1f s (%.1f features/s), %.1f MiB per device", spec.prefix,
                    len(bank), seconds, len(bank) / seconds, bank.bytes_per_device() / 2**20)
    return bank

  def run(self, state):
    bank = self.bank(state)
    queries, y = self.spec.extract(state, self.query_src, self.query_info)
    valid_labels = bank.labels[bank.valid]
    num_classes = int(max(self.bank_info.num_classes, valid_labels.max() + 1, y.max() + 1))
    ks = tuple(sorted(set(self.ks) | {1}))
    preds = knn_predict_sharded(queries, bank, num_classes, ks, self.temperature, self.ctx.mesh,
                                self.query_chunk)
    for k in self.ks:
      yield f"top1_k{k}", 100.0 * float(np.mean(preds[k] == y))
    yield "top1_1nn", 100.0 * float(np.mean(preds[1] == y))


def measure_bank(num: int, dim: int, batch: int = 4096, queries: int = 1024, k: int = 20, seed: int = 0) -> dict:
  """Build a bank of `num` random `dim`-wide features (generated one batch at a time, as
  extraction yields them) over every device, search `queries` against it, and measure: bytes of
  bank per device (exact), this process's peak resident memory above what the device buffers
  themselves take (on CPU devices they live in host memory; on accelerators they do not), and
  the search throughput."""
  import resource  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1)))
  batch = -(-batch // mesh.size) * mesh.size
  rng = np.random.default_rng(seed)

  def batches():
    for start in range(0, num, batch):
      n = min(batch, num - start)
      feats = np.zeros((batch, dim), np.float32)
      feats[:n] = rng.standard_normal((n, dim), dtype=np.float32)
      yield {"image": feats, "label": (np.arange(batch) % 1000).astype(np.int32), "mask": np.arange(batch) < n}

  rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  t0 = time.perf_counter()
  bank = ShardedBank.build(lambda p, f: f, None, batches(), -(-num // batch), mesh)
  jax.block_until_ready(bank.feats)
  built = time.perf_counter() - t0
  q = rng.standard_normal((queries, dim), dtype=np.float32)
  knn_predict_sharded(q[:8], bank, 1000, (k,), 0.07, mesh, query_chunk=queries)  # compile
  t0 = time.perf_counter()
  knn_predict_sharded(q, bank, 1000, (k,), 0.07, mesh, query_chunk=queries)
  searched = time.perf_counter() - t0
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  on_cpu = jax.devices()[0].platform == "cpu"
  device_total = bank.bytes_per_device() * len(jax.local_devices())
  return {"bank": num, "dim": dim, "devices": mesh.size, "bytes_per_device": bank.bytes_per_device(),
          "bank_bytes": num * dim * 4, "host_peak_increase": peak - rss0,
          "host_overhead": peak - rss0 - (device_total if on_cpu else 0),
          "build_features_per_s": num / built, "query_bank_pairs_per_s": queries * num / searched}


def main():
  """`python -m lmim.evaluators.knn --bank N --dim D`: the sharded bank's memory and speed."""
  import argparse  # pylint: disable=import-outside-toplevel
  import json  # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(description=main.__doc__)
  ap.add_argument("--bank", type=int, default=100_000)
  ap.add_argument("--dim", type=int, default=768)
  ap.add_argument("--batch", type=int, default=4096)
  ap.add_argument("--queries", type=int, default=1024)
  a = ap.parse_args()
  print(json.dumps(measure_bank(a.bank, a.dim, a.batch, a.queries), indent=1))


if __name__ == "__main__":
  main()
