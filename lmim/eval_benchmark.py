"""Evaluation throughput: lmim's NN/k-NN feature extraction beside the official Latent MIM NN loop
(`util/misc.py:eval_knn`), on the same images and the same weights, on this machine.

    python -m lmim.eval_benchmark --config configs/lmim_vitb16_in1k.py             # ViT-B/16, 224 px
    python -m lmim.eval_benchmark --config configs/lmim_vitb16_in1k.py:variant=Ti/16 --images 512

Both sides get the same float32 images at the encoder's evaluation size (already resized and
normalised: decoding and resizing are lmim.input_benchmark's subject), in batches of --batch, and
the same weights (the config's encoder at its seeded initialisation, handed to the reference under
the official names by lmim.convert.to_official):

  lmim       lmim.inference.extract_fn with the NN feature (lmim.evaluators.features
             'pooled_pre_norm': the mean of the last block's patch tokens before the final LN),
             sharded over every device: exactly what the `nn` and `knn` evaluators run; then the
             leave-one-out 1-NN (lmim.evaluators.nn_loo).
  reference  the official loop in PyTorch: the encoder with its final norm and head replaced by
             identities, under no_grad, batch by batch, `[:, 1:].mean(1)`, L2 normalisation, then
             per batch of queries an einsum against every feature and the second of the top-2.
             The encoder is the official ViT's evaluation forward (contiguous p-px patchify in
             (row, col, channel) order, linear patch embedding, CLS, the fixed sin-cos table,
             pre-LN blocks with a fused qkv and softmax(q·kᵀ/√d)·v, exact GELU), written here in
             torch's functional ops (the official code is not a dependency). It runs on the
             CPU with every core: compare on CPU machines.

Reported: features/s of the extraction and images/s of the whole NN evaluation (extraction and
neighbour search), medians of alternated repetitions, and lmim ÷ reference from the same run; the
largest difference between the two sides' features (they must be the same numbers, else the ratio
compares different work) and their NN accuracies; lmim's extraction as achieved/peak (XLA's FLOPs
of the forward ÷ this machine's matmul peak, measured in the same window, lmim.benchmark).

The reference needs torch (`pip install torch==2.13.0`, the CPU build; not in requirements.txt);
without it only lmim is measured and the report says so.
"""
import os
import statistics
import time

import jax
import numpy as np

from lmim import config_lib, convert, inference, methods, sharding
from lmim.benchmark import machine, matmul_peak
from lmim.errors import ConfigError, FlagError
from lmim.evaluators import common
from lmim.evaluators import features as feats_lib
from lmim.evaluators import nn_loo
from lmim.models.posemb import sincos_table

NN_FEATURE = "pooled_pre_norm"


def make_images(count: int, size: int, channels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """`count` normalised (size, size, channels) float32 images and labels from 10 classes: each
  class a band of stripe frequencies and orientations, with random phase and noise, so
  neighbours are informative and the two sides' NN accuracies are a real comparison."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, count).astype(np.int32)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
  out = np.empty((count, size, size, channels), np.float32)
  for i, y in enumerate(labels):
    angle = np.pi * y / 10 + rng.normal(0, 0.05)
    freq = 3 + y % 5 + rng.normal(0, 0.2)
    wave = 2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy)
    out[i] = np.stack([np.sin(wave + rng.uniform(0, 2 * np.pi)) for _ in range(channels)], -1)
  out += rng.normal(0, 0.5, out.shape).astype(np.float32)
  return out, labels


def lmim_nn_eval(method, params, mesh, imgs, labels, batch: int):
  """(features (N, D), NN top-1, extraction seconds, total seconds) by lmim's evaluator path."""
  fn = feats_lib.feature_fn(method.encoder_view, NN_FEATURE)
  batches = ({"image": imgs[i:i + batch], "label": labels[i:i + batch],
              "mask": np.ones(len(labels[i:i + batch]), bool), "index": np.arange(i, min(i + batch, len(labels)))}
             for i in range(0, len(labels), batch))
  t0 = time.perf_counter()
  f, y = inference.extract_fn(fn, params, batches, mesh)
  t1 = time.perf_counter()
  top1 = nn_loo.loo_1nn_accuracy(f, y)
  return f, top1, t1 - t0, time.perf_counter() - t0


def official_state_dict(params) -> dict:
  """The encoder's weights under the official names ('encoder.blocks.0.attn.qkv.weight', ...)."""
  return convert.to_official({"params": {"encoder": params}})


def reference_nn_eval(sd: dict, pos_table: np.ndarray, imgs_nchw, labels, *, patch: int, heads: int, depth: int,
                      batch: int):
  """The official `eval_knn` on CPU torch: (features, NN top-1, extraction s, total s)."""
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel
  w = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in sd.items()}   # writable copies
  pe = w.get("encoder.pos_embed.pos_embeds", torch.from_numpy(np.array(pos_table, np.float32))).reshape(-1, sd["encoder.cls_token"].shape[-1])

  def encoder(x):                       # VIT.forward on full images with norm = head = Identity
    n, c, h, wd = x.shape
    g, gw = h // patch, wd // patch
    x = x.reshape(n, c, g, patch, gw, patch)
    x = torch.einsum("nchpwq->nhwpqc", x).reshape(n, g * gw, patch * patch * c)
    x = F.linear(x, w["encoder.embed.proj.weight"], w["encoder.embed.proj.bias"])
    x = torch.cat((w["encoder.cls_token"].repeat(n, 1, 1), x), dim=1)
    x = x + pe[None, : x.shape[1]]
    d = x.shape[-1]
    for i in range(depth):
      b = f"encoder.blocks.{i}."
      y = F.layer_norm(x, (d,), w[b + "norm1.weight"], w[b + "norm1.bias"], eps=1e-6)
      q, k, v = F.linear(y, w[b + "attn.qkv.weight"], w[b + "attn.qkv.bias"]).reshape(
          n, -1, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
      attn = (q @ k.transpose(-2, -1)) * (d // heads) ** -0.5
      y = (attn.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, -1, d)
      x = x + F.linear(y, w[b + "attn.proj.weight"], w[b + "attn.proj.bias"])
      y = F.layer_norm(x, (d,), w[b + "norm2.weight"], w[b + "norm2.bias"], eps=1e-6)
      y = F.linear(F.gelu(F.linear(y, w[b + "mlp.fc1.weight"], w[b + "mlp.fc1.bias"])),
                   w[b + "mlp.fc2.weight"], w[b + "mlp.fc2.bias"])
      x = x + y
    return x

  with torch.no_grad():
    t0 = time.perf_counter()
    feats = [encoder(torch.from_numpy(imgs_nchw[i:i + batch]))[:, 1:].mean(1) for i in range(0, len(labels), batch)]
    t1 = time.perf_counter()
    feats = F.normalize(torch.cat(feats), p=2, dim=1)
    lbl = torch.from_numpy(labels).long()
    correct = 0
    for i in range(0, len(lbl), batch):
      scores = torch.einsum("qd,nd->qn", feats[i:i + batch], feats)
      correct += int((lbl[torch.topk(scores, k=2, dim=1, sorted=True)[1][:, 1]] == lbl[i:i + batch]).sum())
    t2 = time.perf_counter()
  return feats.numpy(), 100.0 * correct / len(lbl), t1 - t0, t2 - t0


def _torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  return torch


def check_method(config) -> None:
  if config.method != "latent_mim":
    raise ConfigError("method", config.method, "'latent_mim': the reference is the official Latent MIM "
                      "NN loop (for other methods run lmim alone with --noreference)")
  if config.model.get("scan_layers"):
    raise ConfigError("model.scan_layers", True, "false with the reference (the official names are per "
                      "block), or run lmim alone with --noreference")


def run(config, *, images: int = 256, batch: int = 64, reps: int = 3, reference: bool = True,
        peak: bool = True, devices=None) -> dict:
  """Alternate lmim and the reference `reps` times over the same generated images."""
  for name, v in (("images", images), ("batch", batch), ("reps", reps)):
    if v < 1:
      raise FlagError(name, v, "must be >= 1")
  if images < 2:
    raise FlagError("images", images, "must be >= 2 (leave-one-out 1-NN)")
  if reference:
    check_method(config)
  torch = _torch() if reference else None
  cfg = config_lib.resolve(config, 1_281_167)
  method = methods.build(cfg, 3, validated=False)
  devices = list(devices if devices is not None else jax.devices())
  mesh = sharding.make_mesh(cfg.mesh, devices)
  params = jax.device_put(method.init(jax.random.key(cfg.seed))[0]["encoder"], sharding.replicated(mesh))
  size, patch = method.eval_image_size, method.patch_size
  imgs, labels = make_images(images, size)
  batch = min(batch, images)

  fn = feats_lib.feature_fn(method.encoder_view, NN_FEATURE)
  cost = jax.jit(fn).lower(params, imgs[:batch]).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops_per_image = float(cost.get("flops", float("nan"))) / batch

  out = {"machine": machine(), "images": images, "batch": batch, "image_size": size, "reps": reps,
         "devices": len(devices), "flops_per_image": flops_per_image,
         "lmim": {"extract_s": [], "total_s": []}}
  ref_args = None
  if torch is not None:
    torch.set_num_threads(len(os.sched_getaffinity(0)))   # every core, as XLA:CPU uses them
    enc = method.encoder
    ref_args = dict(sd=official_state_dict(jax.device_get(params)),
                    pos_table=sincos_table(enc.width, size // patch),
                    imgs_nchw=np.ascontiguousarray(imgs.transpose(0, 3, 1, 2)), labels=labels,
                    patch=patch, heads=enc.num_heads, depth=enc.depth, batch=batch)
    out["reference"] = {"extract_s": [], "total_s": [], "torch": torch.__version__,
                        "threads": torch.get_num_threads()}
  peaks = matmul_peak("float32", devices=devices) if peak else []
  lmim_nn_eval(method, params, mesh, imgs, labels, batch)          # compile and warm up
  if ref_args:
    reference_nn_eval(**ref_args)
  for _ in range(reps):                                            # alternated: one window
    f, top1, ex, tot = lmim_nn_eval(method, params, mesh, imgs, labels, batch)
    out["lmim"]["extract_s"].append(ex)
    out["lmim"]["total_s"].append(tot)
    if ref_args:
      rf, rtop1, rex, rtot = reference_nn_eval(**ref_args)
      out["reference"]["extract_s"].append(rex)
      out["reference"]["total_s"].append(rtot)
  if peak:
    peaks += matmul_peak("float32", devices=devices)
  for side in ("lmim", "reference"):
    if side in out:
      s = out[side]
      s["features_per_s"] = images / statistics.median(s["extract_s"])
      s["nn_images_per_s"] = images / statistics.median(s["total_s"])
  out["lmim"]["nn_top1"] = top1
  if peak:
    out["peak_flops_per_s"] = statistics.median(peaks)
    out["lmim"]["peak_fraction"] = flops_per_image * out["lmim"]["features_per_s"] / out["peak_flops_per_s"]
  if ref_args:
    out["reference"]["nn_top1"] = rtop1
    out["max_feature_diff"] = float(np.abs(common.l2_normalize(f) - rf).max()) / max(float(np.abs(rf).max()), 1e-12)
  return out


def format_report(r: dict) -> str:
  lines = [f"{r['machine']}: NN evaluation of {r['images']} images at {r['image_size']} px, batches of "
           f"{r['batch']}, float32, {r['devices']} device(s); medians of {r['reps']} alternated repetitions"]
  if "reference" not in r:
    lines.append("  (no reference: torch is not installed here; pip install torch==2.13.0 to measure it)")
  lines.append(f"  {'':<12} {'features/s':>11} {'NN images/s':>12} {'NN top-1':>9}")
  for side in ("reference", "lmim"):
    if side in r:
      s = r[side]
      lines.append(f"  {side:<12} {s['features_per_s']:11.1f} {s['nn_images_per_s']:12.1f} {s['nn_top1']:9.1f}")
  if "reference" in r:
    l, ref = r["lmim"], r["reference"]
    lines.append(f"  lmim / reference: {l['features_per_s'] / ref['features_per_s']:.2f}x extraction, "
                 f"{l['nn_images_per_s'] / ref['nn_images_per_s']:.2f}x whole NN evaluation "
                 f"(torch {ref['torch']}, {ref['threads']} threads)")
    lines.append(f"  same features: largest difference {r['max_feature_diff']:.1e} of the largest entry "
                 f"(L2-normalised); same NN top-1: {'yes' if l['nn_top1'] == ref['nn_top1'] else 'NO'}")
  if "peak_flops_per_s" in r:
    lines.append(f"  lmim extraction achieved/peak {r['lmim']['peak_fraction']:.2f} "
                 f"({r['flops_per_image'] / 1e9:.2f} GFLOP/image; XLA's matmul peak "
                 f"{r['peak_flops_per_s'] / 1e9:.1f} GFLOP/s, same window)")
  return "\n".join(lines)


def main():
  """The `lmim-eval-benchmark` command (python -m lmim.eval_benchmark)."""
  from lmim import cli  # pylint: disable=import-outside-toplevel
  cli.main_benchmark(run, format_report, {
      "images": (256, "Images evaluated per repetition (>= 2)."),
      "batch": (64, "Images per batch, both sides."),
      "reps": (3, "Alternated repetitions (medians reported)."),
      "reference": (True, "Also run the official loop in torch (needs torch).")},
      default_config="configs/lmim_vitb16_in1k.py")


if __name__ == "__main__":
  main()
