"""The second embedded dataset `shapes10k`: 10 shape classes drawn procedurally, where raw pixels
are not enough (MNIST is nearly solved by matching pixels, so it cannot show semantics).

Every image is drawn from a seed, deterministically (numpy + PIL), and written on first use as a
local TFDS dataset (array_record) in the data directory, like `mnist5k`; nothing is downloaded.

The class is the **shape** of one object: circle, square, triangle, diamond, star, cross, ring,
L, T, or a pair of bars. Everything else is a nuisance drawn independently per image:
  - position and size (the object spans 35–75 % of the image, anywhere it fits), rotation;
  - colour: foreground and background from independent random RGB colours (never too close);
  - texture: the object and the background each carry i.i.d. multiplicative grain of a random
    strength (no grating: a masked-patch predictor would extrapolate its phase instead of the
    object's outline).
So pixel nearest neighbours are close to chance, and telling the classes apart needs the outline.

Images are 32×32 RGB, drawn at 4× and box-filtered down (anti-aliased edges). Splits: `train`
9,000 (900 per class), `test` 1,000 (100 per class), the class order shuffled.
"""
import math

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from lmim.data import embedded

NAME = "shapes10k"
SIZE = 32
SUPER = 4  # drawn at SIZE·SUPER, box-filtered down
CLASSES = ("circle", "square", "triangle", "diamond", "star", "cross", "ring", "ell", "tee", "bars")
SPLITS = {"train": (900, 20_240_601), "test": (100, 20_240_602)}  # per class, seed
DESCRIPTION = __doc__.splitlines()[0]


def _polygon(kind: str) -> list[list[tuple[float, float]]]:
  """Outlines in a unit box centred on 0 (x, y in [-1, 1]); several polygons are unioned."""
  if kind == "square":
    return [[(-1, -1), (1, -1), (1, 1), (-1, 1)]]
  if kind == "triangle":
    return [[(0, -1), (1, 0.8), (-1, 0.8)]]
  if kind == "diamond":
    return [[(0, -1), (0.8, 0), (0, 1), (-0.8, 0)]]
  if kind == "star":
    pts = []
    for i in range(10):
      r = 1.0 if i % 2 == 0 else 0.42
      a = -math.pi / 2 + i * math.pi / 5
      pts.append((r * math.cos(a), r * math.sin(a)))
    return [pts]
  if kind == "cross":
    w = 0.33
    return [[(-w, -1), (w, -1), (w, 1), (-w, 1)], [(-1, -w), (1, -w), (1, w), (-1, w)]]
  if kind == "ell":
    return [[(-1, -1), (-0.35, -1), (-0.35, 0.35), (1, 0.35), (1, 1), (-1, 1)]]
  if kind == "tee":
    return [[(-1, -1), (1, -1), (1, -0.4), (0.3, -0.4), (0.3, 1), (-0.3, 1), (-0.3, -0.4), (-1, -0.4)]]
  if kind == "bars":
    return [[(-1, -1), (-0.3, -1), (-0.3, 1), (-1, 1)], [(0.3, -1), (1, -1), (1, 1), (0.3, 1)]]
  raise ValueError(kind)


def _mask(kind: str, rng: np.random.Generator) -> np.ndarray:
  """(S·SUPER, S·SUPER) float mask of the object: random size, position and rotation."""
  n = SIZE * SUPER
  img = Image.new("L", (n, n), 0)
  draw = ImageDraw.Draw(img)
  half = rng.uniform(0.35, 0.75) * n / 2                     # half the object's extent
  cx, cy = rng.uniform(half, n - half, size=2)
  angle = rng.uniform(0, 2 * math.pi)
  rot = lambda x, y: (cx + half * (x * math.cos(angle) - y * math.sin(angle)),
                      cy + half * (x * math.sin(angle) + y * math.cos(angle)))
  if kind in ("circle", "ring"):
    draw.ellipse([cx - half, cy - half, cx + half, cy + half], fill=255)
    if kind == "ring":
      inner = half * 0.55
      draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
  else:
    for poly in _polygon(kind):
      draw.polygon([rot(x, y) for x, y in poly], fill=255)
  return np.asarray(img, np.float32) / 255.0


def _texture(rng: np.random.Generator) -> np.ndarray:
  """(S, S) multiplicative texture around 1 at the output resolution: i.i.d. grain of a random
  strength. (No spatially regular texture: a grating would let a masked-patch predictor
  extrapolate the texture's phase instead of the object's outline.)"""
  return 1.0 + rng.uniform(0.05, 0.25) * rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32)


def _colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  while True:
    fg, bg = rng.uniform(0.05, 0.95, size=(2, 3))
    if np.abs(fg - bg).sum() > 0.6:  # the object must stay visible
      return fg, bg


def draw(label: int, rng: np.random.Generator) -> np.ndarray:
  """One uint8 (32, 32, 3) image of class `label`."""
  mask = _mask(CLASSES[label], rng)
  mask = mask.reshape(SIZE, SUPER, SIZE, SUPER).mean(axis=(1, 3))[..., None]  # box filter: anti-aliased
  fg, bg = _colours(rng)
  img = mask * fg * _texture(rng)[..., None] + (1 - mask) * bg * _texture(rng)[..., None]
  return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def generate(split: str):
  """(uint8 images (N, 32, 32, 3), int64 labels (N,)) of a split, the class order shuffled."""
  per_class, seed = SPLITS[split]
  rng = np.random.default_rng(seed)
  labels = np.repeat(np.arange(len(CLASSES)), per_class)
  rng.shuffle(labels)
  return np.stack([draw(int(l), rng) for l in labels]), labels.astype(np.int64)


class Shapes10k(embedded.EmbeddedBuilder):
  """10 procedural shape classes with colour, texture, position, size and rotation nuisances."""
  name = NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "9,000 train / 1,000 test images, 32×32 RGB, 10 classes."}
  DESCRIPTION = DESCRIPTION
  IMAGE_SHAPE = (SIZE, SIZE, 3)
  CLASS_NAMES = CLASSES
  SPLITS = ("train", "test")
  ORIGIN = "drawn from a seed"

  def examples(self, split):
    images, labels = generate(split)
    for i, (img, label) in enumerate(zip(images, labels)):
      yield i, img, int(label)


def ensure_prepared(data_dir: str | None = None) -> str:
  """Build shapes10k into the data directory unless it is there already; returns the data_dir used."""
  return embedded.prepare(Shapes10k, data_dir)
