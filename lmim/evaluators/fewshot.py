"""Few-shot transfer: CoOp's K-shot splits plus the CLIP-style linear probe (docs/methods.md §4e).

For every dataset, every K in `shots` and every seed in `seeds`:
  sample    K train images per class without replacement, and min(K, val_shots) val images per
            class from the val pool, with `np.random.default_rng(seed)` (one fresh generator per
            (seed, K): train classes in sorted label order first, then val). CoOp seeds Python's
            `random` instead, so the draws are not CoOp's images, only the same distribution.
  features  the frozen encoder on eval-view images (`common.FeatureSpec`: encoder, feature, image
            size, resize), extracted once per split for the union of every draw (and the whole test
            split); L2-normalised only when `normalize=True` (CLIP's lpclip does not normalise)
  probe     sklearn LogisticRegression(lbfgs, L2, max_iter=1000). C is chosen on the few-shot val
            set as in `KaiyangZhou/CoOp:lpclip/linear_probe.py`: the grid `c_grid` (1e6 … 1e-6),
            then `search_steps` (8) bisection steps in log10 space over [0.1·C*, 10·C*]: fit at both
            ends, keep the better end (ties go left, to the smaller C), halve the interval towards
            it; the final classifier is the last step's kept one, its test accuracy is reported.
Yields, per dataset <d> and K: `<d>/k<K>_mean` and `<d>/k<K>_std` (test accuracy in %, mean and
population std (ddof 0) over seeds), `<d>/k<K>_log10C` (mean log10 of the chosen C); then
`mean_k<K>`, the mean of `<d>/k<K>_mean` over datasets.

`datasets` entries (a tuple; metric names use `name`):
  'dtd'                a preset below, or any other name `open_source` reads (a TFDS name, 'folder:<root>',
                       'mnist5k'), taken as train='train', val carved, test='test'
  dict(name=..., data=..., train=..., val=..., test=..., pool=..., ignore=..., split_file=...,
       data_dir=..., mean=..., std=...)
                       every key optional except one of name/data; missing keys come from the preset
                       of `name` (e.g. `dict(name='ucf101', data='folder:/data/ucf101_midframes')`)
Which images are train, val and test (the result JSON's `notes` and the log say which was used):
  split_file  CoOp's own split, `split_zhou_<Dataset>.json` ({'train'|'val'|'test': [[image path,
              label, class name], ...]}), given by path. With data='folder:<root>' the paths are read
              under <root> (CoOp's image directory); with a TFDS dataset each path is matched to a
              record of `pool` (default: every split) by its file name (with the class folder when a
              file name repeats across classes, as Caltech101's do). Labels are the file's.
  pool        CoOp's `read_and_split_data` (Caltech101, DTD) and Flowers' `read_data`: every image
              of the `pool` splits, per class (sorted labels, classes named in `ignore` dropped)
              shuffled with np.random.default_rng(0), round(0.5·n) train, round(0.2·n) val, the
              rest test (CoOp's 50/20/30; its own shuffle used Python's `random`, so the images
              differ, the sizes and the procedure do not).
  val=None    CoOp's `split_trainval` (Pets, Cars, SUN397, UCF101): round(val_fraction·n) (≥ 1) of
              each class of the train split become val, the rest the train pool; test as given.
  otherwise   the given TFDS splits.
Splits take TFDS split syntax ('train[:50%]', 'train+validation').

Presets (CoOp's split procedure on the TFDS data; a `split_file` gives CoOp's exact images):
  caltech101         pool train+test, ignore background_google and faces_easy (CoOp's
                     BACKGROUND_Google and Faces_easy), 50/20/30 → 100 classes
  dtd                pool train+validation+test, 50/20/30 (47 classes)
  oxford_flowers102  pool train+validation+test, 50/20/30 (102 classes; TFDS train alone has 10
                     images per class, fewer than K = 16)
  oxford_iiit_pet    train (= trainval) with val carved / test
  cars196            train with val carved / test
  sun397             'sun397/standard-part1-120k' (Training_01 / Testing_01, CoOp's partition):
                     train with val carved / test
  ucf101             TFDS's ucf101 is video. CoOp uses one middle frame per clip (UCF-101-midframes):
                     prepare them as an image folder `<root>/{train,test}/<class>/*.jpg`; the preset
                     reads `folder:<data_dir or $TFDS_DATA_DIR or ~/tensorflow_datasets>/ucf101_midframes`
                     (train / carved / test), or give the path with a dict entry
  mnist5k            the embedded data: train / carved / test (tests and demos)
The test-time view is CoOp's (Dassl): the shorter side resized to the image size (bicubic), then
the central crop (`resize='shorter_side'`, the default here). `feature` picks the representation
(CLIP's lpclip probes the final embedding; `feature='cls'` is its ViT analogue).

Bad input is a one-line error raised when the evaluator is built, before any compile or
extraction: unknown or unprepared data (with how to prepare it), shots that are not positive ints,
no seeds, or a K larger than the smallest class of a train pool (it names the dataset and class).
Labels are read once per split without decoding images (cached per (data, split, data_dir)).
"""
import dataclasses
import logging
import math
import os
import re
import threading
import time
import warnings

import numpy as np

from lmim import data as lmim_data
from lmim.data import sources as data_sources
from lmim.errors import ConfigError, DataNotPreparedError
from lmim.evaluators import common
from lmim.evaluators.collapse import IndexedSubset

log = logging.getLogger("lmim")

DEFAULT_DATASETS = ("caltech101", "dtd", "oxford_flowers102", "oxford_iiit_pet", "cars196", "sun397", "ucf101")
C_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
ALL_SPLITS = "all"  # a split_file's TFDS pool by default: every split (lmim.data reads 'all' as their union)
UCF101_DIR = "ucf101_midframes"
_KEYS = ("name", "data", "train", "val", "test", "pool", "ignore", "split_file", "data_dir", "mean", "std")
_CARVED = dict(train="train", val=None, test="test")
COOP_FRACTIONS = (0.5, 0.2)  # read_and_split_data's p_trn, p_val (the rest is test)
PRESETS = {
    "caltech101": dict(data="caltech101", pool="train+test", ignore=("background_google", "faces_easy"),
                       **_CARVED),
    "dtd": dict(data="dtd", pool="train+validation+test", **_CARVED),
    "oxford_flowers102": dict(data="oxford_flowers102", pool="train+validation+test", **_CARVED),
    "oxford_iiit_pet": dict(data="oxford_iiit_pet", **_CARVED),
    "cars196": dict(data="cars196", **_CARVED),
    "sun397": dict(data="sun397/standard-part1-120k", **_CARVED),
    "ucf101": dict(data=None, **_CARVED),           # folder:<data_dir>/ucf101_midframes
    "mnist5k": dict(data="mnist5k", **_CARVED),
}
UCF101_HOW = (f"UCF101 needs the middle frame of every clip as an image folder "
              f"<root>/train/<class>/*.jpg and <root>/test/<class>/*.jpg (CoOp's UCF-101-midframes), at "
              f"<data_dir>/{UCF101_DIR} or given as datasets=(dict(name='ucf101', data='folder:<root>'), ...)")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  name: str          # metric prefix
  data: str          # for open_source
  train: str
  val: str | None    # None: carved from the train split
  test: str
  data_dir: str | None = None
  mean: tuple | None = None
  std: tuple | None = None
  pool: str | None = None         # carve train/val/test 50/20/30 out of these splits (CoOp)
  ignore: tuple = ()              # class names left out of the pool
  split_file: str | None = None   # CoOp's split_zhou_<Dataset>.json


def _default_name(data: str) -> str:
  if data.startswith("folder:"):
    return os.path.basename(os.path.normpath(data[len("folder:"):])) or "folder"
  return data.split(":")[0].split("/")[0]


def _tag(name: str) -> str:
  """A name usable as a TensorBoard tag."""
  return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def resolve_datasets(entries, data_dir=None, prefix: str = "evals.fewshot") -> list[DatasetSpec]:
  """`datasets` field -> DatasetSpecs (see the module docstring); one-line errors."""
  field = f"{prefix}.datasets"
  if isinstance(entries, str) or hasattr(entries, "items"):
    entries = (entries,)
  try:
    entries = tuple(entries)
  except TypeError:
    raise ConfigError(field, entries, "a tuple of dataset names or dicts") from None
  if not entries:
    raise ConfigError(field, entries, "at least one dataset")
  specs = []
  for i, entry in enumerate(entries):
    if isinstance(entry, str):
      entry = dict(name=entry)
    elif hasattr(entry, "items"):
      entry = dict(entry.to_dict() if hasattr(entry, "to_dict") else entry.items())
    else:
      raise ConfigError(f"{field}[{i}]", entry, "a dataset name or a dict with keys " + ", ".join(_KEYS))
    unknown = sorted(set(entry) - set(_KEYS))
    if unknown:
      raise ConfigError(f"{field}[{i}].{unknown[0]}", entry[unknown[0]], f"not a key; valid: {', '.join(_KEYS)}")
    name = entry.get("name") or (entry.get("data") and _default_name(entry["data"]))
    if not name or not isinstance(name, str):
      raise ConfigError(f"{field}[{i}]", entry, "a dict with a 'name' or a 'data' string")
    base = dict(PRESETS.get(name) or PRESETS.get(_default_name(entry.get("data") or name)) or
                dict(data=name, **_CARVED))
    base.update({k: v for k, v in entry.items() if k != "name"})
    ddir = base.get("data_dir", data_dir)
    if base.get("data") is None:  # ucf101's image folder beside the TFDS data
      root = ddir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
      base["data"] = "folder:" + os.path.join(os.path.expanduser(root), UCF101_DIR)
    for k in ("data", "train", "test"):
      if not isinstance(base.get(k), str) or not base[k]:
        raise ConfigError(f"{field}[{i}].{k}", base.get(k), "a non-empty string")
    if base.get("val") is not None and not isinstance(base["val"], str):
      raise ConfigError(f"{field}[{i}].val", base["val"], "a split, or None to carve val out of train")
    for k in ("pool", "split_file"):
      if base.get(k) is not None and (not isinstance(base[k], str) or not base[k]):
        raise ConfigError(f"{field}[{i}].{k}", base[k], "a non-empty string or None")
    ignore = base.get("ignore") or ()
    ignore = (ignore,) if isinstance(ignore, str) else tuple(ignore)
    if not all(isinstance(c, str) for c in ignore):
      raise ConfigError(f"{field}[{i}].ignore", base.get("ignore"), "class names (strings)")
    split_file = base.get("split_file")
    if split_file is not None and not os.path.isfile(os.path.expanduser(split_file)):
      raise ConfigError(f"{field}[{i}].split_file", split_file, "an existing split_zhou_<Dataset>.json file")
    specs.append(DatasetSpec(name=_tag(name), data=base["data"], train=base["train"], val=base.get("val"),
                             test=base["test"], data_dir=ddir, mean=base.get("mean"), std=base.get("std"),
                             pool=base.get("pool"), ignore=ignore,
                             split_file=os.path.expanduser(split_file) if split_file else None))
  names = [s.name for s in specs]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise ConfigError(field, entries, f"distinct dataset names (give a 'name' to tell '{dup[0]}' apart)")
  return specs


def datasets(fields: dict) -> list:
  """What this evaluator reads, for `--check`."""
  out = []
  for s in resolve_datasets(fields.get("datasets", DEFAULT_DATASETS), fields.get("data_dir")):
    if s.split_file and s.data.startswith("folder:"):
      continue  # the JSON names the files itself
    splits = (s.pool or ALL_SPLITS,) if s.split_file else (s.pool,) if s.pool else (s.train, s.val, s.test)
    for split in splits:
      if split is not None:
        out.append((s.data, split, s.data_dir))
  return out


###################################################################################################
# Labels, pools and the K-shot sampler.
###################################################################################################

_label_cache: dict = {}
_label_lock = threading.Lock()


def split_labels(source, key) -> np.ndarray:
  """Labels of a whole split, read once per key (data, split, data_dir)."""
  with _label_lock:
    if key not in _label_cache:
      _label_cache[key] = source.labels()
    return _label_cache[key]


def carve_val(labels: np.ndarray, fraction: float, seed: int = 0):
  """Per class (sorted), round(fraction·n) (at least 1, leaving at least 1) random examples become
  val -> (train pool indices, val pool indices), both sorted."""
  rng = np.random.default_rng(seed)
  train, val = [], []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_val = min(max(1, int(round(fraction * len(idx)))), len(idx) - 1)
    val.append(idx[:n_val])
    train.append(idx[n_val:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def coop_split(labels: np.ndarray, keep=None, fractions=COOP_FRACTIONS, seed: int = 0):
  """CoOp's read_and_split_data on one pool: per class (sorted; only `keep` ids when given) the
  examples shuffled, round(p_trn·n) train, round(p_val·n) val, the rest test (Python's round, as
  CoOp) -> (train, val, test) indices into the pool, each sorted."""
  rng = np.random.default_rng(seed)
  p_trn, p_val = fractions
  out = ([], [], [])
  for c in np.unique(labels):
    if keep is not None and c not in keep:
      continue
    idx = rng.permutation(np.flatnonzero(labels == c))
    n_trn, n_val = round(len(idx) * p_trn), round(len(idx) * p_val)
    if n_trn < 1 or n_val < 1 or len(idx) - n_trn - n_val < 1:
      raise ValueError(f"class {int(c)} has {len(idx)} images: too few for a {p_trn}/{p_val}/rest split")
    for part, rows in zip(out, (idx[:n_trn], idx[n_trn:n_trn + n_val], idx[n_trn + n_val:])):
      part.append(rows)
  return tuple(np.sort(np.concatenate(p)) for p in out)


def read_split_file(path: str) -> dict:
  """CoOp's split_zhou_<Dataset>.json -> {split: (paths, labels)} for train, val and test."""
  import json  # pylint: disable=import-outside-toplevel
  with open(path, encoding="utf-8") as f:
    raw = json.load(f)
  out = {}
  for split in ("train", "val", "test"):
    rows = raw.get(split)
    if not rows or not all(isinstance(r, (list, tuple)) and len(r) >= 2 for r in rows):
      raise ValueError(f"{path}: '{split}' must be a non-empty list of [image path, label, class name]")
    out[split] = ([str(r[0]) for r in rows], np.asarray([int(r[1]) for r in rows], np.int64))
  return out


class Relabelled:
  """Rows of a source with the labels given (CoOp's split files carry their own): len, [i], labels()."""

  def __init__(self, source, rows, labels):
    self.source, self.rows, self.label_ids = source, np.asarray(rows, np.int64), np.asarray(labels, np.int64)

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return dict(self.source[int(self.rows[int(i)])], label=int(self.label_ids[int(i)]))

  def labels(self):
    return self.label_ids


def match_files(paths, tfds_names, tfds_classes, class_names) -> np.ndarray:
  """Rows of a TFDS pool for CoOp image paths: by file name, or by (class folder, file name) where
  a file name occurs in several classes (Caltech101's image_0001.jpg) -> row per path."""
  by_name: dict = {}
  for row, (name, c) in enumerate(zip(tfds_names, tfds_classes)):
    by_name.setdefault(os.path.basename(name), []).append((row, class_names[c].lower() if c >= 0 else ""))
  rows = np.empty(len(paths), np.int64)
  for i, p in enumerate(paths):
    found = by_name.get(os.path.basename(p), [])
    if len(found) > 1:
      folder = os.path.basename(os.path.dirname(p)).lower()
      found = [f for f in found if f[1] == folder]
    if len(found) != 1:
      raise ValueError(f"{p}: {'no' if not found else len(found)} record(s) of the TFDS data with this file name")
    rows[i] = found[0][0]
  return rows


def sample_per_class(pool: np.ndarray, labels: np.ndarray, k: int, rng, classes=None) -> np.ndarray:
  """min(k, class size) indices of `pool` per class (sorted class order), without replacement.

  `labels` are the labels of the pool's examples (aligned with `pool`)."""
  classes = np.unique(labels) if classes is None else classes
  out = []
  for c in classes:
    members = pool[labels == c]
    if len(members):
      out.append(rng.choice(members, size=min(k, len(members)), replace=False))
  return np.concatenate(out) if out else np.zeros((0,), np.int64)


def draw(train_pool, train_labels, val_pool, val_labels, k: int, seed: int, val_shots: int = 4):
  """One few-shot draw -> (train indices, val indices): K per class of the train pool, then
  min(K, val_shots) per class of the val pool, from np.random.default_rng(seed)."""
  rng = np.random.default_rng(seed)
  classes = np.unique(train_labels)
  train = sample_per_class(train_pool, train_labels, k, rng, classes)
  val = sample_per_class(val_pool, val_labels, min(k, val_shots), rng, classes)
  return train, val


###################################################################################################
# The CLIP-style linear probe with CoOp's C search.
###################################################################################################


def _fit(x, y, c: float, max_iter: int):
  from sklearn.exceptions import ConvergenceWarning
  from sklearn.linear_model import LogisticRegression
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", ConvergenceWarning)
    # L2 is the default penalty (l1_ratio=0); `penalty=` is deprecated since sklearn 1.8.
    return LogisticRegression(C=c, solver="lbfgs", max_iter=max_iter).fit(x, y)


def _acc(clf, x, y) -> float:
  return float(np.mean(clf.predict(x) == y))


def search_c(train, val, test, *, grid=C_GRID, steps: int = 8, max_iter: int = 1000):
  """lpclip's search. train/val/test are (features, labels) -> (test accuracy in %, chosen C).

  Grid: the first best val accuracy wins. Then `steps` times: fit at C_left and C_right (from
  0.1·C* and 10·C*); the better (ties: left) is kept and the interval becomes its half in log10
  space. The last kept classifier gives the test accuracy.
  """
  (xtr, ytr), (xv, yv), (xte, yte) = train, val, test
  accs = [_acc(_fit(xtr, ytr, c, max_iter), xv, yv) for c in grid]
  c_peak = grid[int(np.argmax(accs))]
  if steps <= 0:
    return 100.0 * _acc(_fit(xtr, ytr, c_peak, max_iter), xte, yte), float(c_peak)
  c_left, c_right = 0.1 * c_peak, 10.0 * c_peak
  for _ in range(steps):
    clf_left, clf_right = _fit(xtr, ytr, c_left, max_iter), _fit(xtr, ytr, c_right, max_iter)
    lo, hi = math.log10(c_left), math.log10(c_right)
    if _acc(clf_left, xv, yv) < _acc(clf_right, xv, yv):
      c_final, clf_final = c_right, clf_right
      lo, hi = 0.5 * (lo + hi), hi
    else:
      c_final, clf_final = c_left, clf_left
      lo, hi = lo, 0.5 * (lo + hi)
    c_left, c_right = 10.0 ** lo, 10.0 ** hi
  return 100.0 * _acc(clf_final, xte, yte), float(c_final)


###################################################################################################
# The evaluator.
###################################################################################################


def _ints(value, field: str, what: str, minimum: int) -> tuple:
  values = value if isinstance(value, (tuple, list)) else (value,)
  if not values or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= minimum
                           for v in values):
    raise ConfigError(field, value, what)
  return tuple(sorted(set(int(v) for v in values)))


@dataclasses.dataclass
class _Prepared:
  """One dataset, opened and sampled: sources, and every (K, seed) draw as split indices."""
  spec: DatasetSpec
  train: tuple            # (source, info)
  val: tuple | None       # (source, info), None when val rows live in the train source
  test: tuple
  draws: dict             # (K, seed) -> (train indices, val indices)
  test_ids: np.ndarray | None = None   # rows of the test source that are test (None: all)
  note: str = ""          # which split procedure was used


class Evaluator:
  """CoOp few-shot linear probe (module docstring)."""

  def __init__(self, ctx, *, datasets=DEFAULT_DATASETS, data_dir: str | None = None, shots=(1, 2, 4, 8, 16),
               seeds=(1, 2, 3), val_shots: int = 4, val_fraction: float = 0.2, normalize: bool = False,
               c_grid=C_GRID, search_steps: int = 8, max_iter: int = 1000, encoder: str = "online",
               feature: str = "pooled_pre_norm", image_size: int | None = None, resize: str = "shorter_side",
               batch_size: int = 256):
    p = self.prefix = f"evals.{ctx.name}"
    self.shots = _ints(shots, f"{p}.shots", "one or more ints >= 1 (images per class)", 1)
    self.seeds = _ints(seeds, f"{p}.seeds", "one or more int seeds >= 0", 0)
    self.val_shots = _ints(val_shots, f"{p}.val_shots", "an int >= 1", 1)[0]
    if not 0 < val_fraction < 1:
      raise ConfigError(f"{p}.val_fraction", val_fraction, "in (0, 1)")
    grid = tuple(c_grid) if isinstance(c_grid, (tuple, list)) else (c_grid,)
    if not grid or not all(isinstance(c, (int, float)) and c > 0 for c in grid):
      raise ConfigError(f"{p}.c_grid", c_grid, "one or more inverse regularisation strengths C > 0")
    if not isinstance(search_steps, int) or search_steps < 0:
      raise ConfigError(f"{p}.search_steps", search_steps, "an int >= 0")
    if not isinstance(max_iter, int) or max_iter < 1:
      raise ConfigError(f"{p}.max_iter", max_iter, "an int >= 1")
    self.ctx, self.normalize, self.grid = ctx, bool(normalize), tuple(float(c) for c in grid)
    self.search_steps, self.max_iter, self.val_fraction = search_steps, max_iter, float(val_fraction)
    self.spec = common.FeatureSpec(ctx, encoder=encoder, feature=feature, image_size=image_size,
                                   resize=resize, batch_size=batch_size)
    if self.spec.feature.startswith("patch_tokens"):
      raise ConfigError(f"{p}.feature", feature, "a pooled feature (pooled_pre_norm, pooled, cls, block<k>)")
    specs = resolve_datasets(datasets, data_dir, p)
    self.datasets = [self._prepare(i, s) for i, s in enumerate(specs)]

  def _open(self, i: int, s: DatasetSpec, split: str):
    try:
      return lmim_data.open_source(s.data, split, s.data_dir, mean=s.mean, std=s.std,
                                   config_prefix=f"{self.prefix}.datasets[{i}]")
    except DataNotPreparedError as e:
      if s.name == "ucf101":
        raise DataNotPreparedError(f"{e}; {UCF101_HOW}") from None
      raise

  def _from_split_file(self, i: int, s: DatasetSpec):
    """CoOp's split file -> {split: (source, info)} with the file's images and labels."""
    field = f"{self.prefix}.datasets[{i}].split_file"
    try:
      table = read_split_file(s.split_file)
    except (ValueError, OSError) as e:
      raise ConfigError(field, s.split_file, str(e)) from None
    out = {}
    if s.data.startswith("folder:"):
      root = os.path.expanduser(s.data[len("folder:"):])
      files = {k: [os.path.join(root, p) for p in paths] for k, (paths, _) in table.items()}
      missing = [f for k in files for f in files[k] if not os.path.isfile(f)]
      if missing:
        raise ConfigError(field, s.split_file, f"paths under {root} (CoOp's image directory); "
                          f"{len(missing)} missing, e.g. {missing[0]}")
      channels = data_sources._channels(files["train"])  # pylint: disable=protected-access
      for k, (_, labels) in table.items():
        src = data_sources.FolderSource(files[k], labels.tolist(), channels)
        mean, std = (s.mean, s.std) if s.mean is not None and s.std is not None else \
            data_sources.estimate_stats(src, channels)
        out[k] = (src, lmim_data.DataInfo(name=s.data, num_examples=len(src), num_classes=int(labels.max()) + 1,
                                          channels=channels, mean=tuple(mean), std=tuple(std)))
      return out
    pool, info = self._open(i, s, s.pool or ALL_SPLITS)
    names = pool.file_names()
    try:
      rows = {k: match_files(paths, names, split_labels(pool, (s.data, s.pool or ALL_SPLITS, s.data_dir)),
                             info.class_names) for k, (paths, _) in table.items()}
    except ValueError as e:
      raise ConfigError(field, s.split_file, f"paths matching {s.data}'s records: {e}") from None
    for k, (_, labels) in table.items():
      out[k] = (Relabelled(pool, rows[k], labels),
                dataclasses.replace(info, num_examples=len(labels), num_classes=int(labels.max()) + 1))
    return out

  def _prepare(self, i: int, s: DatasetSpec) -> _Prepared:
    test_ids = None
    if s.split_file:
      splits = self._from_split_file(i, s)
      train, val, test = splits["train"], splits["val"], splits["test"]
      y_train = train[0].labels()
      y_val_all = val[0].labels()
      train_pool, val_pool = np.arange(len(y_train)), np.arange(len(y_val_all))
      where, note = "of the split file", f"CoOp split file {s.split_file}"
    elif s.pool:
      train = test = self._open(i, s, s.pool)
      val = None
      y_train = y_val_all = split_labels(train[0], (s.data, s.pool, s.data_dir))
      names = train[1].class_names
      unknown = [c for c in s.ignore if c not in names]
      if unknown:
        raise ConfigError(f"{self.prefix}.datasets[{i}].ignore", s.ignore,
                          f"class names of {s.data} ({unknown[0]!r} is not one)")
      keep = {c for c in range(len(names)) if names[c] not in s.ignore} if names else None
      try:
        train_pool, val_pool, test_ids = coop_split(y_train, keep)
      except ValueError as e:
        raise ConfigError(f"{self.prefix}.datasets[{i}].pool", s.pool, str(e)) from None
      where = "(50 % of the pool)"
      note = (f"CoOp 50/20/30 carved from '{s.pool}'" + (f" without {', '.join(s.ignore)}" if s.ignore else "")
              + f": {len(train_pool)}/{len(val_pool)}/{len(test_ids)} images")
    else:
      train, test = self._open(i, s, s.train), self._open(i, s, s.test)
      val = self._open(i, s, s.val) if s.val is not None else None
      y_train = split_labels(train[0], (s.data, s.train, s.data_dir))
      if val is None:
        train_pool, val_pool = carve_val(y_train, self.val_fraction)
        y_val_all = y_train
        where = f"'{s.train}' less the carved val"
        note = f"'{s.train}' with {self.val_fraction:.0%} per class carved as val (CoOp's split_trainval), '{s.test}'"
      else:
        train_pool = np.arange(len(y_train))
        y_val_all = split_labels(val[0], (s.data, s.val, s.data_dir))
        val_pool = np.arange(len(y_val_all))
        where = f"'{s.train}'"
        note = f"given splits '{s.train}' / '{s.val}' / '{s.test}'"
    classes, counts = np.unique(y_train[train_pool], return_counts=True)
    if max(self.shots) > counts.min():
      c = int(classes[np.argmin(counts)])
      raise ConfigError(f"{self.prefix}.shots", self.shots,
                        f"each K at most {counts.min()}: class {c} of {s.name} train {where} has "
                        f"{counts.min()} images (the smallest class)")
    short = classes[~np.isin(classes, y_val_all[val_pool])]
    if len(short) == len(classes):
      raise ConfigError(f"{self.prefix}.datasets[{i}].val", s.val,
                        f"a split with images of the classes of {s.name} train (it has none)")
    if len(short):
      log.warning("%s: %s val has no images of class(es) %s", self.prefix, s.name, short.tolist()[:10])
    draws = {(k, seed): draw(train_pool, y_train[train_pool], val_pool, y_val_all[val_pool], k, seed,
                             self.val_shots)
             for k in self.shots for seed in self.seeds}
    log.info("%s: %s splits: %s", self.prefix, s.name, note)
    return _Prepared(s, train, val, test, draws, test_ids, note)

  def _features(self, state, source_info, indices):
    """Features and labels of the rows `indices` (sorted unique) of a split."""
    source, info = source_info
    f, y = self.spec.extract(state, IndexedSubset(source, tuple(int(i) for i in indices)), info)
    f = np.asarray(f, np.float32)
    return (common.l2_normalize(f) if self.normalize else f), np.asarray(y, np.int64)

  def _evaluate(self, state, d: _Prepared) -> dict:
    t0 = time.perf_counter()
    train_ids = np.unique(np.concatenate([t for t, _ in d.draws.values()]))
    val_ids = np.unique(np.concatenate([v for _, v in d.draws.values()]))
    if d.val is None:  # carved: val rows live in the train split
      train_ids = np.union1d(train_ids, val_ids)
    xtr_all, ytr_all = self._features(state, d.train, train_ids)
    if d.val is None:
      xv_all, yv_all, v_ids = xtr_all, ytr_all, train_ids
    else:
      (xv_all, yv_all), v_ids = self._features(state, d.val, val_ids), val_ids
    xte, yte = self._features(state, d.test, np.arange(len(d.test[0])) if d.test_ids is None else d.test_ids)
    out = {}
    for k in self.shots:
      accs, cs = [], []
      for seed in self.seeds:
        t, v = d.draws[(k, seed)]
        rt, rv = np.searchsorted(train_ids, t), np.searchsorted(v_ids, v)
        acc, c = search_c((xtr_all[rt], ytr_all[rt]), (xv_all[rv], yv_all[rv]), (xte, yte),
                          grid=self.grid, steps=self.search_steps, max_iter=self.max_iter)
        accs.append(acc)
        cs.append(math.log10(c))
      out[f"{d.spec.name}/k{k}_mean"] = float(np.mean(accs))
      out[f"{d.spec.name}/k{k}_std"] = float(np.std(accs))       # population std (ddof 0), as CoOp
      out[f"{d.spec.name}/k{k}_log10C"] = float(np.mean(cs))
    log.info("%s: %s (%d train, %d val, %d test images) in %.1f s: %s", self.prefix, d.spec.name,
             len(train_ids), len(val_ids), len(yte), time.perf_counter() - t0,
             ", ".join(f"k{k} {out[f'{d.spec.name}/k{k}_mean']:.2f}±{out[f'{d.spec.name}/k{k}_std']:.2f}"
                       for k in self.shots))
    return out

  @property
  def notes(self) -> dict:
    """Which split procedure each dataset used (recorded in the result JSON)."""
    return {d.spec.name: d.note for d in self.datasets}

  def run(self, state):
    self.spec.params(state)  # the named encoder is there, or a one-line error before any work
    means = {k: [] for k in self.shots}
    for d in self.datasets:  # per-dataset numbers stream out as they are computed
      results = self._evaluate(state, d)
      yield from results.items()
      for k in self.shots:
        means[k].append(results[f"{d.spec.name}/k{k}_mean"])
    for k in self.shots:
      yield f"mean_k{k}", float(np.mean(means[k]))
