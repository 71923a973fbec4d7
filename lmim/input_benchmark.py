"""Input-pipeline throughput: lmim's grain pipeline beside the official PyTorch pipeline's operations,
on the same JPEGs, on this machine.

    python -m lmim.input_benchmark                      # 512 ImageNet-sized JPEGs, 2 workers
    python -m lmim.input_benchmark --images 1024 --workers 4 --size 280

The JPEGs are generated on the fly (ImageNet-like sizes around 500×375, smooth shapes and grain,
quality 90) into an image folder, and the same folder is written as a TFDS array_record dataset
(lmim-prepare folder). Three pipelines read them, each with `--workers` workers:

  lmim folder         data.train_batches over the image folder (grain threads: PIL decode,
                      torchvision's RandomResizedCrop(scale=(0.2, 1)) with PIL bicubic to --size,
                      flip, normalise; batches of --batch)
  lmim array_record   the same over the TFDS array_record dataset
  reference           the official pipeline's operations as a PyTorch DataLoader runs them: worker
                      processes each decode with PIL, crop (torchvision's algorithm), resize with PIL
                      bicubic, flip, ToTensor (÷255, CHW), Normalize, and collate a batch that is
                      sent back to the main process. torchvision does not install beside the pinned
                      CPU torch, so the operations are written here with PIL and numpy.

Reported: images/s (wall, after a warm-up batch) and images per CPU-second (all threads and worker
processes counted), the figure that says how many host cores an accelerator needs; and the ratio
lmim ÷ reference of each, measured in one run.
"""
import argparse
import io
import multiprocessing as mp
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from lmim.data import transforms

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# Typical ImageNet train sizes (width, height): most are 500 px on the long side.
SIZES = ((500, 375), (500, 333), (375, 500), (500, 400), (640, 480), (500, 500), (333, 500), (800, 600))


def make_jpegs(root: str, count: int, seed: int = 0, classes: int = 4) -> list[str]:
  """`count` JPEGs in `root`/train/<class>/: smooth gradients, a few shapes, grain (so they compress
  like photographs, not like noise or flat colour)."""
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    w, h = SIZES[i % len(SIZES)]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([(np.sin(xx / rng.uniform(30, 200) + rng.uniform(0, 6)) + 1) * 100 + rng.uniform(0, 55)
                     for _ in range(3)], -1) + (yy / h * rng.uniform(-60, 60))[..., None]
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(6):
      x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
      r = rng.uniform(20, 150)
      draw.ellipse([x0 - r, y0 - r, x0 + r, y0 + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    arr = np.asarray(img).astype(np.float32) + rng.normal(0, 6, (h, w, 3))
    folder = os.path.join(root, "train", f"class{i % classes}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{i:06d}.jpg")
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(path, quality=90)
    paths.append(path)
  return paths


###################################################################################################
# The reference: the official pipeline's operations in DataLoader-style worker processes.
###################################################################################################

def _reference_example(path: str, rng: np.random.Generator, size: int) -> np.ndarray:
  """torchvision's RandomResizedCrop(size, scale=(0.2, 1), interpolation=BICUBIC), then
  RandomHorizontalFlip, ToTensor and Normalize, on one file: float32 (3, size, size)."""
  with open(path, "rb") as f:
    img = Image.open(io.BytesIO(f.read())).convert("RGB")           # pil_loader
  top, left, h, w = transforms.random_resized_crop_params(img.height, img.width, rng, (0.2, 1.0))
  img = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
  if rng.random() < 0.5:
    img = img.transpose(Image.FLIP_LEFT_RIGHT)
  x = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0      # ToTensor: CHW in [0, 1]
  return (x - np.asarray(IMAGENET_MEAN, np.float32)[:, None, None]) / np.asarray(IMAGENET_STD, np.float32)[:, None, None]


def _reference_batch(args) -> tuple[np.ndarray, float]:
  """One worker task: a whole batch, collated (default_collate stacks), and the CPU time it took."""
  paths, seed, size = args
  t0 = time.process_time()
  rng = np.random.default_rng(seed)
  batch = np.stack([_reference_example(p, rng, size) for p in paths])
  return batch, time.process_time() - t0


def reference_throughput(paths: list[str], *, workers: int, batch: int, size: int, batches: int) -> dict:
  order = np.random.default_rng(0).permutation(len(paths))
  tasks = [([paths[order[(b * batch + i) % len(paths)]] for i in range(batch)], b, size) for b in range(batches + 1)]
  ctx = mp.get_context("spawn")  # not fork: the parent may already run JAX's threads
  with ctx.Pool(workers) as pool:
    it = pool.imap(_reference_batch, tasks)
    next(it)                                         # warm-up batch (worker start)
    main0, t0 = time.process_time(), time.perf_counter()
    worker_cpu = sum(cpu for _, cpu in it)
    wall = time.perf_counter() - t0
    main_cpu = time.process_time() - main0           # unpickling the batches in the main process
  n = batches * batch
  return {"images_per_s": n / wall, "images_per_cpu_s": n / (worker_cpu + main_cpu), "wall_s": wall}


###################################################################################################
# lmim's pipeline.
###################################################################################################

def lmim_throughput(data: str, data_dir: str | None, *, workers: int, batch: int, size: int, batches: int) -> dict:
  from lmim.data import open_source, train_batches  # pylint: disable=import-outside-toplevel
  source, info = open_source(data, "train", data_dir, mean=IMAGENET_MEAN, std=IMAGENET_STD)
  it = train_batches(source, info, image_size=size, global_batch=batch, accum_steps=1, start_step=0, seed=0,
                     min_crop=0.2, num_threads=workers, prefetch=2)
  next(it)                                           # warm-up batch (threads start, first reads)
  cpu0, t0 = time.process_time(), time.perf_counter()
  for _ in range(batches):
    b = next(it)
  wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
  assert b["image"].shape == (1, batch, size, size, 3)
  n = batches * batch
  return {"images_per_s": n / wall, "images_per_cpu_s": n / cpu, "wall_s": wall}


def run(*, images: int = 512, workers: int = 2, batch: int = 32, size: int = 280, batches: int = 0,
        workdir: str | None = None) -> dict:
  batches = batches or max(2, images // batch)
  with tempfile.TemporaryDirectory(dir=workdir) as tmp:
    root = os.path.join(tmp, "jpegs")
    paths = make_jpegs(root, images)
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
    from lmim.data import prepare  # pylint: disable=import-outside-toplevel
    tfds.disable_progress_bar()
    data_dir = os.path.join(tmp, "tfds")
    prepare.prepare_folder("input_benchmark_jpegs", root, data_dir)
    kw = dict(workers=workers, batch=batch, size=size, batches=batches)
    out = {"reference": reference_throughput(paths, **kw),
           "lmim_folder": lmim_throughput(f"folder:{root}", None, **kw),
           "lmim_array_record": lmim_throughput("input_benchmark_jpegs", data_dir, **kw)}
  out.update(images=images, workers=workers, batch=batch, size=size, batches=batches,
             cores=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
  return out


def format_report(r: dict) -> str:
  ref = r["reference"]
  lines = [f"{r['images']} JPEGs (~500x375), RandomResizedCrop to {r['size']} px + flip + normalise, batches of "
           f"{r['batch']}, {r['workers']} workers on {r['cores']} cores:",
           f"  {'pipeline':<20} {'images/s':>10} {'images/CPU-s':>13} {'vs reference':>13}"]
  for name in ("reference", "lmim_folder", "lmim_array_record"):
    x = r[name]
    lines.append(f"  {name:<20} {x['images_per_s']:10.1f} {x['images_per_cpu_s']:13.1f} "
                 f"{x['images_per_s'] / ref['images_per_s']:6.2f}x wall {x['images_per_cpu_s'] / ref['images_per_cpu_s']:5.2f}x CPU")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="lmim-input-benchmark", description=__doc__.splitlines()[0])
  p.add_argument("--images", type=int, default=512)
  p.add_argument("--workers", type=int, default=2, help="grain threads (lmim) and worker processes (reference)")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--size", type=int, default=280, help="training crop side (280: Latent MIM's 14 cells of 20 px)")
  p.add_argument("--batches", type=int, default=0, help="timed batches (default: one pass over the images)")
  p.add_argument("--json", action="store_true")
  a = p.parse_args(argv)
  for name in ("images", "workers", "batch", "size"):
    if getattr(a, name) < 1:
      print(f"lmim: error: --{name}={getattr(a, name)} is invalid: must be >= 1", file=sys.stderr)
      return 2
  from lmim.metrics_writer import console_logging  # pylint: disable=import-outside-toplevel
  console_logging()
  r = run(images=a.images, workers=a.workers, batch=a.batch, size=a.size, batches=a.batches)
  if a.json:
    import json  # pylint: disable=import-outside-toplevel
    print(json.dumps(r))
  else:
    print(format_report(r))
  return 0


if __name__ == "__main__":
  sys.exit(main())
