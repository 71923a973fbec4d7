"""DAVIS-2017 scores as the official `davis2017-evaluation` computes them (docs/methods.md §4d),
in numpy/scipy (no OpenCV, no scikit-image):

  J   region similarity: IoU of the binary result and GT masks of one object in one frame; 1
      when the union is empty. Void pixels (GT value 255) are background: the official
      semi-supervised scorer passes no void mask (the functions take one, as the official ones do).
  F   boundary accuracy: 1-pixel boundary maps (`seg2bmap`), each dilated with a disk of radius
      bound_pix = ceil(0.008·‖(H, W)‖₂) (≈ 8 px at 480p);
          P = |fg_b ∩ dil(gt_b)| / |fg_b|,  R = |gt_b ∩ dil(fg_b)| / |gt_b|,  F = 2PR / (P + R)
      both boundaries empty → P = R = 1; only the result's empty → (1, 0); only the GT's → (0, 1).
  statistics over the frames of one object: mean (nanmean), recall (fraction of frames > 0.5),
      decay (mean of the first of 4 bins − mean of the last), bins as `db_statistics` cuts them.

`disk(r)` is skimage.morphology.disk(r) (x² + y² ≤ r²); the dilation (OpenCV's `cv2.dilate` in
the official code, zero outside the image) is scipy.ndimage.binary_dilation on the bounding box
of the boundary pixels grown by r, which is exact and much faster than dilating the whole frame.
"""
import math
import warnings

import numpy as np
from scipy import ndimage

BOUND_TH = 0.008


def disk(radius) -> np.ndarray:
  """skimage.morphology.disk: (2r+1, 2r+1) uint8, 1 where x² + y² ≤ r²."""
  r = int(radius)
  grid = np.arange(-r, r + 1)
  x, y = np.meshgrid(grid, grid)
  return (x ** 2 + y ** 2 <= r ** 2).astype(np.uint8)


def dilate(mask, radius) -> np.ndarray:
  """Binary dilation of a (H, W) mask with disk(radius); nothing outside the image."""
  mask = np.asarray(mask, bool)
  r = int(radius)
  ys, xs = np.nonzero(mask)
  out = np.zeros_like(mask)
  if len(ys) == 0:
    return out
  y0, y1 = max(ys.min() - r, 0), min(ys.max() + r + 1, mask.shape[0])
  x0, x1 = max(xs.min() - r, 0), min(xs.max() + r + 1, mask.shape[1])
  out[y0:y1, x0:x1] = ndimage.binary_dilation(mask[y0:y1, x0:x1], structure=disk(r).astype(bool))
  return out


def seg2bmap(seg) -> np.ndarray:
  """1-pixel boundary map of a binary (H, W) mask (the official `_seg2bmap` at full size): a
  pixel is on the boundary when it differs from its east, south or south-east neighbour."""
  seg = np.asarray(seg).astype(bool)
  e = np.zeros_like(seg)
  s = np.zeros_like(seg)
  se = np.zeros_like(seg)
  e[:, :-1] = seg[:, 1:]
  s[:-1, :] = seg[1:, :]
  se[:-1, :-1] = seg[1:, 1:]
  b = (seg ^ e) | (seg ^ s) | (seg ^ se)
  b[-1, :] = seg[-1, :] ^ e[-1, :]
  b[:, -1] = seg[:, -1] ^ s[:, -1]
  b[-1, -1] = 0
  return b


def db_eval_iou(annotation, segmentation, void=None) -> float:
  """J of one object in one frame: IoU of two binary (H, W) masks outside `void`; 1 if the union is empty."""
  gt, res = np.asarray(annotation, bool), np.asarray(segmentation, bool)
  keep = np.ones_like(gt) if void is None else ~np.asarray(void, bool)
  inter = np.sum(gt & res & keep)
  union = np.sum((gt | res) & keep)
  return 1.0 if np.isclose(union, 0) else float(inter / union)


def bound_pixels(shape, bound_th: float = BOUND_TH) -> int:
  return int(bound_th if bound_th >= 1 else math.ceil(bound_th * np.linalg.norm(shape)))


def f_measure(foreground, gt, void=None, bound_th: float = BOUND_TH) -> float:
  """F of one object in one frame (the official `f_measure`)."""
  fg, gt = np.asarray(foreground, bool), np.asarray(gt, bool)
  if void is not None:
    keep = ~np.asarray(void, bool)
    fg, gt = fg & keep, gt & keep
  r = bound_pixels(fg.shape, bound_th)
  fg_b, gt_b = seg2bmap(fg), seg2bmap(gt)
  n_fg, n_gt = int(fg_b.sum()), int(gt_b.sum())
  if n_fg == 0 and n_gt > 0:
    precision, recall = 1.0, 0.0
  elif n_fg > 0 and n_gt == 0:
    precision, recall = 0.0, 1.0
  elif n_fg == 0 and n_gt == 0:
    precision, recall = 1.0, 1.0
  else:
    precision = np.sum(fg_b & dilate(gt_b, r)) / n_fg
    recall = np.sum(gt_b & dilate(fg_b, r)) / n_gt
  if precision + recall == 0:
    return 0.0
  return float(2 * precision * recall / (precision + recall))


def frame_scores(result, gt, num_objects: int, bound_th: float = BOUND_TH):
  """Index masks (H, W) of one frame -> (J (num_objects,), F (num_objects,)) for objects 1..n.

  As the official semi-supervised evaluation: it passes no void mask (`_evaluate_semisupervised(
  ..., None, metric)`), so GT pixels of value 255 count as background of every object, and a
  prediction there costs precision like anywhere else (the unsupervised task is the one that
  excludes them)."""
  gt = np.asarray(gt)
  result = np.asarray(result)
  j = np.zeros(num_objects)
  f = np.zeros(num_objects)
  for k in range(num_objects):
    g, r = gt == k + 1, result == k + 1
    j[k] = db_eval_iou(g, r)
    f[k] = f_measure(r, g, None, bound_th)
  return j, f


def db_statistics(per_frame_values):
  """(mean, recall, decay) of one object's per-frame values (the official `db_statistics`).

  The 4 decay bins are cut at round(linspace(1, n, 5)) − 1 (inclusive ends), as there; the
  official code stores the cut points as uint8, which overflows past 256 frames; int64 here."""
  v = np.asarray(per_frame_values, np.float64)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=RuntimeWarning)
    mean = np.nanmean(v)
    recall = np.nanmean(v > 0.5)
    ids = (np.round(np.linspace(1, len(v), 5) + 1e-10) - 1).astype(np.int64)
    bins = [v[ids[i]:ids[i + 1] + 1] for i in range(4)]
    decay = np.nanmean(bins[0]) - np.nanmean(bins[3])
  return float(mean), float(recall), float(decay)


def summarize(j_per_object, f_per_object) -> dict:
  """Per-object per-frame J and F lists -> the global table, averaged over objects (not
  sequences), in [0, 1]: J_mean, J_recall, J_decay, F_*, JF_mean = (J_mean + F_mean) / 2."""
  out = {}
  for name, values in (("J", j_per_object), ("F", f_per_object)):
    stats = np.array([db_statistics(v) for v in values]).reshape(-1, 3)
    for col, stat in enumerate(("mean", "recall", "decay")):
      out[f"{name}_{stat}"] = float(np.mean(stats[:, col])) if len(stats) else float("nan")
  out["JF_mean"] = (out["J_mean"] + out["F_mean"]) / 2
  return out
