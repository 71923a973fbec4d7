"""Host-side image transforms with torchvision's exact semantics (numpy + PIL).

Training (the official recipe): RandomResizedCrop(size, scale=(min_crop, 1), ratio=(3/4, 4/3),
bicubic), RandomHorizontalFlip(0.5), then normalisation. Evaluation: Resize(int(size / 0.875),
bicubic) on the shorter side, CenterCrop(size), normalisation. As torchvision does on PIL images,
crops and resizes run on uint8 PIL images (PIL's bicubic, rounded and clipped to uint8), so
features match a PyTorch pipeline fed the same crops.

Every random choice comes from the `np.random.Generator` passed in, so an example's view depends
only on the generator the pipeline derives from (seed, global example index).
"""
import math

import numpy as np
from PIL import Image, ImageEnhance

from lmim.data import augment


def _to_pil(img: np.ndarray) -> Image.Image:
  return Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)


def _to_numpy(pil: Image.Image, channels: int) -> np.ndarray:
  arr = np.asarray(pil)
  return arr[..., None] if channels == 1 else arr


def random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                               scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's `RandomResizedCrop.get_params` -> (top, left, h, w).

  Up to 10 attempts: area fraction ~ U(scale), aspect ratio log-uniform in `ratio`, sides
  rounded; the first crop that fits is placed uniformly. If none fits, a centre crop of the
  whole image clamped to the ratio range.
  """
  for h, w in _crop_sizes(height, width, rng, scale, ratio):
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    return top, left, h, w
  return _centre_fallback(height, width, ratio)


def _crop_sizes(height: int, width: int, rng: np.random.Generator, scale, ratio):
  """RandomResizedCrop's size proposals: yields the first (h, w) of 10 attempts that fits."""
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      yield h, w
      return


def _centre_fallback(height: int, width: int, ratio) -> tuple[int, int, int, int]:
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def tf_random_resized_crop_params(height: int, width: int, rng: np.random.Generator,
                                  scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """MAE's `util/crop.py` RandomResizedCrop.get_params ("following the TF implementation", used by
  its linear probe) -> (top, left, h, w): one proposal, its sides clipped to the image, no retry
  and no centre fallback."""
  target_area = height * width * rng.uniform(scale[0], scale[1])
  aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  w = min(int(round(math.sqrt(target_area * aspect))), width)
  h = min(int(round(math.sqrt(target_area / aspect))), height)
  top = int(rng.integers(0, height - h + 1))
  left = int(rng.integers(0, width - w + 1))
  return top, left, h, w


CROP_STYLES = {"torchvision": random_resized_crop_params, "tf": tf_random_resized_crop_params}


def random_resized_crop(img: np.ndarray, size: int, rng: np.random.Generator,
                        scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3), style: str = "torchvision") -> np.ndarray:
  """uint8 (H, W, C) -> uint8 (size, size, C): crop at torchvision's `random_resized_crop_params`
  (style='tf': MAE's TF-style `tf_random_resized_crop_params`), then bicubic."""
  top, left, h, w = CROP_STYLES[style](img.shape[0], img.shape[1], rng, scale, ratio)
  pil = _to_pil(img).crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
  return _to_numpy(pil, img.shape[-1])


def horizontal_flip(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
  """Mirror left-right with probability p (torchvision: flip if rand() < p)."""
  return img[:, ::-1] if rng.random() < p else img


def resize_shorter(img: np.ndarray, size: int) -> np.ndarray:
  """torchvision `Resize(int)`: the shorter side becomes `size`, the longer int(size·long/short)."""
  h, w = img.shape[:2]
  if h <= w:
    nh, nw = size, int(size * w / h)
  else:
    nh, nw = int(size * h / w), size
  if (nh, nw) == (h, w):
    return img
  return _to_numpy(_to_pil(img).resize((nw, nh), Image.BICUBIC), img.shape[-1])


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """torchvision `CenterCrop(size)` for images at least `size` on each side (offsets rounded)."""
  h, w = img.shape[:2]
  if h < size or w < size:
    raise ValueError(f"center_crop({size}) of a {h}×{w} image: resize it first")
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  return img[top:top + size, left:left + size]


def eval_resize_center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """The evaluation view: shorter side to int(size / 0.875) (bicubic), then the central size×size."""
  return center_crop(resize_shorter(img, int(size / 0.875)), size)


def resize_full(img: np.ndarray, size: int) -> np.ndarray:
  """The whole image squashed to size×size (bicubic): positions map linearly to the source image."""
  if img.shape[:2] == (size, size):
    return img
  return _to_numpy(_to_pil(img).resize((size, size), Image.BICUBIC), img.shape[-1])


def resize_shorter_center_crop(img: np.ndarray, size: int) -> np.ndarray:
  """CoOp's (Dassl's) test view: shorter side to `size` (bicubic), then the central size×size."""
  return center_crop(resize_shorter(img, size), size)


EVAL_RESIZES = {"center_crop": eval_resize_center_crop, "full": resize_full, "shorter_side": resize_shorter_center_crop}


def normalize(img: np.ndarray, mean, std) -> np.ndarray:
  """uint8 -> float32 (x / 255 − mean) / std, per channel."""
  x = img.astype(np.float32) / np.float32(255)  # ToTensor divides; so do we, bit for bit
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def contrastive_crop_params(height: int, width: int, box, rng: np.random.Generator, alpha: float,
                            scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """ContrastiveCrop (Peng et al., CVPR 2022): RandomResizedCrop's size, but the crop *centre*
  drawn from Beta(α, α) across the box (h0, w0, h1, w1) in [0, 1] (α < 1 pushes centres to the
  box edges). The crop stays inside the image; the scale is relative to the whole image."""
  h0, w0, h1, w1 = (float(v) for v in box)
  for h, w in _crop_sizes(height, width, rng, scale, ratio):
    t0 = max(int(height * h0) - h // 2, 0)
    t1 = max(min(int(height * h1) - h // 2, height - h), t0)   # the official code lacks this guard
    l0 = max(int(width * w0) - w // 2, 0)
    l1 = max(min(int(width * w1) - w // 2, width - w), l0)
    top = int(t0 + (t1 - t0) * rng.beta(alpha, alpha))
    left = int(l0 + (l1 - l0) * rng.beta(alpha, alpha))
    return top, left, h, w
  return _centre_fallback(height, width, ratio)


def color_jitter(img: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
  """torchvision's ColorJitter(brightness=s, contrast=s, saturation=s, hue=0) on a PIL image: the
  three adjustments in a random order, each with a factor ~ U[max(0, 1−s), 1+s], done with PIL's
  ImageEnhance as torchvision does for PIL input (data2vec's BEiT pipeline: ColorJitter(0.4))."""
  if strength <= 0:
    return img
  order = rng.permutation(4)                       # torchvision draws the order over all four
  factors = [rng.uniform(max(0.0, 1 - strength), 1 + strength) for _ in range(3)]  # (hue: none)
  pil = _to_pil(img)
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  for fn in order:
    if fn < 3 and not (fn == 2 and img.shape[-1] == 1):  # saturation is a no-op on grayscale
      pil = enhancers[fn](pil).enhance(factors[fn])
  return _to_numpy(pil, img.shape[-1])


def train_transform(img: np.ndarray, rng: np.random.Generator, *, size: int, mean, std,
                    min_crop: float = 0.2, flip: bool = True, box=None, alpha: float = 1.0,
                    jitter: float = 0.0, crop_style: str = "torchvision") -> np.ndarray:
  """(ColorJitter(jitter) on the whole image, when > 0) -> RandomResizedCrop(scale=(min_crop, 1))
  (or ContrastiveCrop in `box`) -> flip(0.5) -> normalise; float32 (size, size, C)."""
  img = color_jitter(img, rng, jitter)
  if box is None:
    img = random_resized_crop(img, size, rng, scale=(min_crop, 1.0), style=crop_style)
  else:
    top, left, h, w = contrastive_crop_params(img.shape[0], img.shape[1], box, rng, alpha, (min_crop, 1.0))
    img = _to_numpy(_to_pil(img).crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC),
                    img.shape[-1])
  if flip:
    img = horizontal_flip(img, rng)
  return normalize(img, mean, std)


def eval_transform(img: np.ndarray, *, size: int, mean, std, resize: str = "center_crop") -> np.ndarray:
  """Resize(int(size/0.875)) -> CenterCrop(size) (or `resize='full'`) -> normalise; float32 (S, S, C)."""
  return normalize(EVAL_RESIZES[resize](img, size), mean, std)


def finetune_transform(img: np.ndarray, rng: np.random.Generator, *, size: int, mean, std, min_crop: float = 0.08,
                       rand_augment: dict | None = None, erasing: float = 0.25) -> np.ndarray:
  """MAE fine-tuning's train view: RandomResizedCrop(min_crop, 1) -> flip -> RandAugment ->
  normalise -> random erasing; float32 (size, size, C)."""
  img = horizontal_flip(random_resized_crop(img, size, rng, scale=(min_crop, 1.0)), rng)
  if rand_augment:
    img = augment.rand_augment(img, rng, mean=mean, **rand_augment)
  out = normalize(img, mean, std)
  return augment.random_erasing(out, rng, erasing) if erasing > 0 else out
