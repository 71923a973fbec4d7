"""Fine-tuning augmentation with timm's semantics (MAE's recipe, docs/methods.md §4c), on the host.

RandAugment (`rand-m<M>-mstd<S>-inc1`): `n` = 2 operations drawn with replacement from the
"increasing" set, each applied with probability 0.5 at a magnitude ~ N(M, S) clipped to [0, 10];
geometric operations fill with the dataset mean and resample bicubically. Random erasing
(probability p, 'pixel' mode, one box of 2–33% of the image, aspect 0.3–3.3) writes N(0, 1) noise
into the *normalised* image. Every draw comes from the numpy Generator passed in.
"""
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_MAX_LEVEL = 10.0
INCREASING_OPS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                  "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                  "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")


def parse_rand_augment(spec: str) -> dict:
  """'rand-m9-mstd0.5-inc1' -> dict(magnitude=9, magnitude_std=0.5, num_layers=2)."""
  parts = spec.split("-")
  if parts[0] != "rand":
    raise ValueError(f"not a RandAugment spec: {spec!r} (expected e.g. 'rand-m9-mstd0.5-inc1')")
  out = dict(magnitude=10.0, magnitude_std=0.0, num_layers=2, increasing=False)
  for p in parts[1:]:
    m = re.fullmatch(r"(mstd|m|n|inc)([\d.]+)", p)
    if not m:
      raise ValueError(f"unknown RandAugment option {p!r} in {spec!r}")
    key, val = m.groups()
    if key == "m":
      out["magnitude"] = float(val)
    elif key == "mstd":
      out["magnitude_std"] = float(val)
    elif key == "n":
      out["num_layers"] = int(val)
    else:
      out["increasing"] = bool(int(val))
  if not out["increasing"]:
    raise ValueError(f"only the 'inc1' operation set (MAE's) is implemented, got {spec!r}")
  return out


def _signed(v: float, rng) -> float:
  return -v if rng.random() < 0.5 else v


def _affine(img, matrix, fill):
  return img.transform(img.size, Image.AFFINE, matrix, resample=Image.BICUBIC, fillcolor=fill)


def _apply(name: str, img: Image.Image, level: float, rng, fill) -> Image.Image:
  frac = level / _MAX_LEVEL
  if name == "AutoContrast":
    return ImageOps.autocontrast(img)
  if name == "Equalize":
    return ImageOps.equalize(img)
  if name == "Invert":
    return ImageOps.invert(img)
  if name == "Rotate":
    return img.rotate(_signed(frac * 30.0, rng), resample=Image.BICUBIC, fillcolor=fill)
  if name == "PosterizeIncreasing":
    return ImageOps.posterize(img, max(1, 4 - int(frac * 4)))  # timm allows 0 bits; PIL ≥ 10 does not
  if name == "SolarizeIncreasing":
    return ImageOps.solarize(img, 256 - int(frac * 256))
  if name == "SolarizeAdd":
    add, lut = int(frac * 110), []
    for i in range(256):
      lut.append(min(255, i + add) if i < 128 else i)
    lut = lut * len(img.getbands())
    return img.point(lut)
  if name in ("ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"):
    enhancer = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
                "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}
    factor = max(0.1, 1.0 + _signed(frac * 0.9, rng))
    return enhancer[name[:-len("Increasing")]](img).enhance(factor)
  if name == "ShearX":
    return _affine(img, (1, _signed(frac * 0.3, rng), 0, 0, 1, 0), fill)
  if name == "ShearY":
    return _affine(img, (1, 0, 0, _signed(frac * 0.3, rng), 1, 0), fill)
  if name == "TranslateXRel":
    return _affine(img, (1, 0, _signed(frac * 0.45, rng) * img.size[0], 0, 1, 0), fill)
  if name == "TranslateYRel":
    return _affine(img, (1, 0, 0, 0, 1, _signed(frac * 0.45, rng) * img.size[1]), fill)
  raise ValueError(name)


def rand_augment(img: np.ndarray, rng: np.random.Generator, *, magnitude: float = 9.0, magnitude_std: float = 0.5,
                 num_layers: int = 2, mean=(0.485, 0.456, 0.406), prob: float = 0.5, **_) -> np.ndarray:
  """uint8 (H, W, C) -> uint8 (H, W, C) after `num_layers` RandAugment operations."""
  channels = img.shape[-1]
  pil = Image.fromarray(img[..., 0], mode="L") if channels == 1 else Image.fromarray(img)
  fill = tuple(min(255, round(255 * m)) for m in mean)
  fill = fill[0] if channels == 1 else fill
  for name in rng.choice(INCREASING_OPS, num_layers, replace=True):
    if rng.random() > prob:
      continue
    level = magnitude if magnitude_std <= 0 else rng.normal(magnitude, magnitude_std)
    pil = _apply(str(name), pil, min(_MAX_LEVEL, max(0.0, level)), rng, fill)
  out = np.asarray(pil)
  return out[..., None] if channels == 1 else out


def random_erasing(img: np.ndarray, rng: np.random.Generator, probability: float = 0.25,
                   min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3) -> np.ndarray:
  """timm RandomErasing(mode='pixel', max_count=1) on a normalised float (H, W, C) image."""
  if rng.random() > probability:
    return img
  h, w = img.shape[:2]
  log_ratio = (math.log(min_aspect), math.log(1 / min_aspect))
  for _ in range(10):
    target = rng.uniform(min_area, max_area) * h * w
    aspect = math.exp(rng.uniform(*log_ratio))
    eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if ew < w and eh < h:
      top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
      img = img.copy()
      img[top:top + eh, left:left + ew] = rng.standard_normal((eh, ew, img.shape[-1])).astype(img.dtype)
      return img
  return img
