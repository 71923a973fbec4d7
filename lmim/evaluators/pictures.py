"""Pictures of the representation, for people: what do the patch features pick out?

Three figures of `num_images` images of the split (drawn with `seed`), each written as a PNG
`<workdir>/pictures/<name>_<kind>_step<step>.png` (process 0; none without a workdir) and as a
TensorBoard image `<name>/<kind>` when the context has a writer:

  pca        top row: the inputs (denormalised with the split's mean/std); bottom row: the first
             three principal components of the patch features, fitted jointly over the shown
             images (so colours mean the same thing in every column), min-max scaled to RGB and
             shown at the patch grid (each patch a p×p block). Metric: pca_explained_variance,
             the % of the feature variance the three components hold.
  clusters   top row: the inputs; bottom row: each image's patches clustered by agglomerative
             (Ward) clustering of the L2-normalised patch features into `n_clusters` segments,
             colours ordered by segment size (largest first, often the background): the
             unsupervised segmentation figure of the Latent MIM README. Metric: cluster_entropy,
             the entropy of the segment sizes over log(n_clusters), averaged over images (0: one
             segment covers the image, 1: equal segments).
  retrieval  one row per shown image: the query, then its `num_neighbours` nearest images by
             cosine of the pooled feature (the mean of the patch features) in a bank of
             `bank_size` images of the same split (the query itself excluded); a green or red
             frame marks whether a neighbour shares the query's label. Metrics: retrieval_cosine
             (mean cosine of the neighbours) and, for labelled data, retrieval_agreement (% of
             neighbours with the query's label).
Also yielded: files_written (PNG files) and images_logged (TensorBoard images).

Tiles are the evaluation view magnified by an integer factor to at least MIN_TILE pixels
(nearest neighbour, so patch boundaries stay visible), PAD pixels apart on a white ground.
"""
import logging
import math
import os
import time

import jax
import numpy as np
from PIL import Image
from scipy.cluster import hierarchy

from lmim.data import transforms
from lmim.errors import ConfigError
from lmim.evaluators import common
from lmim.evaluators.collapse import IndexedSubset

log = logging.getLogger("lmim")

# Patch features and the pooled feature that is their mean over tokens (features.select).
PATCH_FEATURES = {"patch_tokens": "pooled", "patch_tokens_pre_norm": "pooled_pre_norm"}
KINDS = ("pca", "clusters", "retrieval")
MIN_TILE = 64
PAD = 2
# Distinct segment colours (matplotlib's tab10 and two more), the largest segment first.
PALETTE = np.array([(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
                    (0, 0, 128), (255, 215, 0)], np.uint8)
MATCH, MISMATCH, GROUND = (0, 170, 0), (220, 0, 0), (255, 255, 255)


def pca_rgb(features) -> tuple[np.ndarray, float]:
  """(N, L, D) patch features -> (RGB in [0, 1] (N, L, 3), % of variance in the 3 components).

  One PCA over all N·L tokens (centred), so a colour names the same feature direction in every
  image. Each component is min-max scaled over all tokens; its sign is fixed so that its
  largest loading is positive (SVD signs are arbitrary). Fewer than 3 directions leave the
  missing channels at 0.
  """
  f = np.asarray(features, np.float64)
  n, num_tokens, dim = f.shape
  x = f.reshape(n * num_tokens, dim)
  x = x - x.mean(axis=0)
  _, s, vt = np.linalg.svd(x, full_matrices=False)
  k = min(3, len(s))
  axes = vt[:k] * np.sign(vt[:k][np.arange(k), np.abs(vt[:k]).argmax(axis=1)])[:, None]
  proj = x @ axes.T
  lo, hi = proj.min(axis=0), proj.max(axis=0)
  rgb = np.zeros((n * num_tokens, 3))
  rgb[:, :k] = (proj - lo) / np.where(hi > lo, hi - lo, 1.0)
  total = np.sum(s ** 2)
  explained = 100.0 * np.sum(s[:k] ** 2) / total if total > 0 else 100.0
  return rgb.reshape(n, num_tokens, 3), float(explained)


def cluster_patches(features, n_clusters: int) -> np.ndarray:
  """(L, D) patch features of one image -> segment ids (L,) in [0, n_clusters), 0 the largest.

  Ward linkage on L2-normalised features (cosine geometry, as every other evaluator compares
  features), cut into at most n_clusters clusters; ids are renumbered by decreasing size, ties
  by first patch, so colours are stable across images and runs.
  """
  x = common.l2_normalize(np.asarray(features, np.float64))
  if len(x) < 2:
    return np.zeros(len(x), np.int64)
  raw = hierarchy.fcluster(hierarchy.linkage(x, method="ward"), t=n_clusters, criterion="maxclust")
  ids, first, sizes = np.unique(raw, return_index=True, return_counts=True)
  order = sorted(range(len(ids)), key=lambda i: (-sizes[i], first[i]))
  rank = {ids[i]: r for r, i in enumerate(order)}
  return np.array([rank[c] for c in raw], np.int64)


def size_entropy(segments, n_clusters: int) -> float:
  """Entropy of the segment sizes of one image over log(n_clusters): 0 one segment, 1 equal."""
  _, counts = np.unique(segments, return_counts=True)
  p = counts / counts.sum()
  return float(-np.sum(p * np.log(p)) / math.log(n_clusters))


def cosine_neighbours(queries, bank, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
  """Top-k cosine neighbours of each query in the bank -> (indices (Q, k), cosines (Q, k)).

  `exclude` (Q,) names one bank row per query to skip (the query itself), -1 for none.
  """
  sims = common.l2_normalize(np.asarray(queries, np.float64)) @ common.l2_normalize(
      np.asarray(bank, np.float64)).T
  if exclude is not None:
    rows = np.flatnonzero(np.asarray(exclude) >= 0)
    sims[rows, np.asarray(exclude)[rows]] = -np.inf
  idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
  return idx, np.take_along_axis(sims, idx, axis=1)


def tile_scale(image_size: int) -> int:
  return max(1, math.ceil(MIN_TILE / image_size))


def compose(rows, scale: int, frames=None) -> np.ndarray:
  """Rows of equal-size (h, w, 3) uint8 tiles -> one (H, W, 3) uint8 picture.

  Tiles are magnified `scale`× (nearest) and laid PAD pixels apart; `frames[r][c]`, an RGB
  triple or None, colours the PAD-wide ring around tile (r, c).
  """
  h, w = rows[0][0].shape[0] * scale, rows[0][0].shape[1] * scale
  cols = max(len(r) for r in rows)
  out = np.full((len(rows) * (h + PAD) + PAD, cols * (w + PAD) + PAD, 3), GROUND, np.uint8)
  for r, row in enumerate(rows):
    for c, t in enumerate(row):
      y, x = PAD + r * (h + PAD), PAD + c * (w + PAD)
      frame = frames[r][c] if frames is not None else None
      if frame is not None:
        out[y - PAD:y + h + PAD, x - PAD:x + w + PAD] = frame
      out[y:y + h, x:x + w] = np.repeat(np.repeat(t, scale, axis=0), scale, axis=1)
  return out


def patch_map(values, grid: tuple[int, int], patch_size: int) -> np.ndarray:
  """(L, 3) per-patch values in grid order -> (gh·p, gw·p, 3): each patch a p×p block."""
  m = np.asarray(values).reshape(grid[0], grid[1], -1)
  return np.repeat(np.repeat(m, patch_size, axis=0), patch_size, axis=1)


def to_uint8(x) -> np.ndarray:
  return np.clip(np.round(np.asarray(x, np.float64) * 255), 0, 255).astype(np.uint8)


datasets = common.one_split


class Evaluator:
  """PCA maps, segmentations and retrieval grids (module docstring), plus a number for each."""

  def __init__(self, ctx, *, data: str, split: str, data_dir: str | None = None, mean=None, std=None, classes=None,
               num_images: int = 8, encoder: str = "online", feature: str = "patch_tokens",
               image_size: int | None = None, resize: str = "center_crop", n_clusters: int = 5,
               num_neighbours: int = 5, bank_size: int = 2048, batch_size: int = 256, seed: int = 0):
    prefix = f"evals.{ctx.name}"
    if feature not in PATCH_FEATURES:
      raise ConfigError(f"{prefix}.feature", feature,
                        f"a patch-token feature, one of {list(PATCH_FEATURES)}: pictures need a vector per patch")
    if not isinstance(num_images, int) or num_images < 1:
      raise ConfigError(f"{prefix}.num_images", num_images, "an int >= 1")
    if not isinstance(n_clusters, int) or not 2 <= n_clusters <= len(PALETTE):
      raise ConfigError(f"{prefix}.n_clusters", n_clusters, f"an int in [2, {len(PALETTE)}]")
    if not isinstance(num_neighbours, int) or num_neighbours < 1:
      raise ConfigError(f"{prefix}.num_neighbours", num_neighbours, "an int >= 1")
    self.spec = common.FeatureSpec(ctx, encoder=encoder, feature=feature, image_size=image_size,
                                   resize=resize, batch_size=batch_size)
    self.source, self.info = common.open_split(ctx, data, split, data_dir, mean, std, classes)
    n = len(self.source)
    # One extra bank image: a query in the bank does not count as its own neighbour.
    if min(bank_size, n) < num_neighbours + 1:
      raise ConfigError(f"{prefix}.bank_size", bank_size,
                        f"at least num_neighbours + 1 = {num_neighbours + 1} (and the split has {n} images)")
    self.ctx, self.prefix = ctx, prefix
    self.n_clusters, self.num_neighbours = n_clusters, num_neighbours
    rng = np.random.default_rng(seed)
    self.shown = np.sort(rng.choice(n, size=min(num_images, n), replace=False))
    self.bank = np.sort(rng.choice(n, size=min(bank_size, n), replace=False))

  def _display(self, index: int) -> np.ndarray:
    """The evaluation view the encoder saw, denormalised to (S, S, 3) uint8."""
    x = transforms.eval_transform(self.source[int(index)]["image"], size=self.spec.image_size,
                                  mean=self.info.mean, std=self.info.std, resize=self.spec.resize)
    x = x * np.asarray(self.info.std, np.float32) + np.asarray(self.info.mean, np.float32)
    x = to_uint8(x)
    return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x[..., :3]

  def _write(self, kind: str, picture: np.ndarray) -> tuple[int, int]:
    """One figure to a PNG file and TensorBoard -> (files written, images logged)."""
    ctx, files, logged = self.ctx, 0, 0
    if ctx.workdir is not None and jax.process_index() == 0:
      folder = os.path.join(ctx.workdir, "pictures")
      os.makedirs(folder, exist_ok=True)
      Image.fromarray(picture).save(os.path.join(folder, f"{ctx.name}_{kind}_step{int(ctx.step)}.png"))
      files = 1
    if ctx.writer is not None:
      ctx.writer.write_image(f"{ctx.name}/{kind}", picture, int(ctx.step))
      logged = 1
    return files, logged

  def run(self, state):
    t0 = time.perf_counter()
    encoder, spec = self.ctx.encoder, self.spec
    patches, labels = spec.extract(state, IndexedSubset(self.source, tuple(self.shown)), self.info)
    bank, bank_labels = spec.extract(state, IndexedSubset(self.source, tuple(self.bank)), self.info,
                                     feature=PATCH_FEATURES[spec.feature])
    grid = (spec.image_size // encoder.patch_size,) * 2
    scale = tile_scale(spec.image_size)
    inputs = [self._display(i) for i in self.shown]
    metrics, pictures = {}, {}

    rgb, metrics["pca_explained_variance"] = pca_rgb(patches)
    maps = [to_uint8(patch_map(v, grid, encoder.patch_size)) for v in rgb]
    pictures["pca"] = compose([inputs, maps], scale)

    segments = [cluster_patches(f, self.n_clusters) for f in patches]
    metrics["cluster_entropy"] = float(np.mean([size_entropy(s, self.n_clusters) for s in segments]))
    seg_maps = [patch_map(PALETTE[s], grid, encoder.patch_size) for s in segments]
    pictures["clusters"] = compose([inputs, seg_maps], scale)

    # The pooled feature of a shown image is the mean of its patch features (features.select).
    position = {int(b): j for j, b in enumerate(self.bank)}
    exclude = np.array([position.get(int(i), -1) for i in self.shown])
    idx, cos = cosine_neighbours(patches.mean(axis=1), bank, self.num_neighbours, exclude)
    metrics["retrieval_cosine"] = float(cos.mean())
    labelled = self.info.num_classes > 0
    if labelled:
      metrics["retrieval_agreement"] = 100.0 * float(np.mean(bank_labels[idx] == labels[:, None]))
    rows, frames = [], []
    for q, neighbours in enumerate(idx):
      rows.append([inputs[q]] + [self._display(self.bank[j]) for j in neighbours])
      frames.append([None] + [(MATCH if bank_labels[j] == labels[q] else MISMATCH) if labelled else None
                              for j in neighbours])
    pictures["retrieval"] = compose(rows, scale, frames)

    files = logged = 0
    for kind in KINDS:
      wrote, shown = self._write(kind, pictures[kind])
      files, logged = files + wrote, logged + shown
    metrics["files_written"], metrics["images_logged"] = files, logged
    log.info("%s: %d images, bank %d, %.1f s", self.prefix, len(self.shown), len(self.bank),
             time.perf_counter() - t0)
    yield from metrics.items()
