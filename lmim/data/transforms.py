"""Host-side image transforms with torchvision's exact semantics (numpy + PIL).

Training (official recipe, spec §3): RandomResizedCrop(scale=(min_crop, 1), ratio=(3/4, 4/3),
bicubic) to g·(p+gap) pixels, horizontal flip with p = 0.5, then normalisation.
Evaluation: Resize(int(size/0.875), bicubic) on the shorter side, CenterCrop(size), normalise.
Every random choice comes from the `np.random.Generator` passed in, so an example's view depends
only on the seed grain derives from (pipeline seed, global example index).
"""
import math

import numpy as np
from PIL import Image


def _pil(img: np.ndarray) -> Image.Image:
  return Image.fromarray(img[..., 0], mode="L") if img.shape[-1] == 1 else Image.fromarray(img)


def _np(pil: Image.Image, channels: int) -> np.ndarray:
  arr = np.asarray(pil)
  return arr[..., None] if channels == 1 else arr


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop.get_params: (top, left, h, w); 10 tries, then a centre crop."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  top, left, h, w = random_resized_crop_params(img.shape[0], img.shape[1], rng, scale, ratio)
  pil = _pil(img).crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
  return _np(pil, img.shape[-1])


def horizontal_flip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  return img[:, ::-1] if rng.random() < p else img


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
  """torchvision Resize(int): the shorter side becomes `size`, the longer keeps the aspect (floor)."""
  h, w = img.shape[:2]
  if h <= w:
    nh, nw = size, int(size * w / h)
  else:
    nh, nw = int(size * h / w), size
  return _np(_pil(img).resize((nw, nh), Image.BICUBIC), img.shape[-1])


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  h, w = img.shape[:2]
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return img[top:top + size, left:left + size]


def normalize(img: np.ndarray, mean, std) -> np.ndarray:
  x = img.astype(np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def train_transform(img: np.ndarray, rng: np.random.Generator, *, size: int, mean, std,
                    min_crop: float = 0.2) -> np.ndarray:
  img = random_resized_crop(img, size, rng, scale=(min_crop, 1.0))
  return normalize(horizontal_flip(img, rng), mean, std)


def eval_transform(img: np.ndarray, *, size: int, mean, std) -> np.ndarray:
  return normalize(center_crop(resize_shorter(img, int(size / 0.875)), size), mean, std)
