"""What the laptop-scale studies share: the small ViT, the data, the schedule, the evaluations.

Scaled from the official ViT-B/16 recipe together: a 96-wide, 4-deep ViT (4 heads) on 4-px
patches of the embedded images (mnist5k: a 7×7 grid of 28-px digits; shapes10k: an 8×8 grid of
32-px RGB images), gap 1 px (the official 4 px of a 16-px patch, scaled with the patch), a 2×384
projector, a 2-block 64-wide decoder, batch 128, `steps` optimiser steps with 5 % warmup, blr
1.5e-3, Sim groups of 64. Visible counts keep the official fractions of the grid (20/196 → 5 of 49 or
7 of 64; 49/196 → 12 of 49 or 16 of 64).
"""
import ml_collections as mlc

DATASETS = {"mnist5k": 7, "shapes10k": 8}  # grid of 4-px patches


def visible(official: int, data: str) -> int:
  """An official visible count (of 196 patches) scaled to the dataset's grid."""
  return max(1, round(official / 196 * DATASETS[data] ** 2))


def model_overrides(data: str, steps: int) -> dict:
  """The small ViT, data and schedule, as dotted overrides on a `runlocal` config."""
  return {"model.variant": "S/4", "model.width": 96, "model.depth": 4, "model.num_heads": 4,
          "model.grid_size": DATASETS[data], "model.projector.dim": 384, "model.decoder.width": 64,
          "model.decoder.depth": 2, "model.decoder.num_heads": 4, "input.data": data, "input.split": "train",
          "input.num_threads": 2, "batch_size": 128, "total_steps": steps, "warmup_steps": max(1, steps // 20),
          "optim.blr": 1.5e-3, "log_every_steps": 50, "checkpoint.every_steps": steps, "checkpoint.keep_last": 1,
          "evals.nn.data": data, "evals.nn.split": "test", "evals.nn.batch_size": 250,
          "evals.nn.every_steps": steps}


def final_evals(data: str) -> dict:
  m = dict(data=data, batch_size=250, feature="pooled_pre_norm")
  return {
      "nn": dict(type="nn_loo", split="test", **m),
      "knn": dict(type="knn", split="test", train_split="train", k=(20,), **m),
      "linear": dict(type="linear_probe", split="test", train_split="train", epochs=30, warmup_epochs=3,
                     blrs=(1.0, 3.0, 10.0, 30.0, 100.0, 300.0), augment=False, **{**m, "batch_size": 1024}),
      "collapse": dict(type="collapse", split="test", data=data, max_images=1000),
  }


def study(name: str, description: str, cells, *, data: str, steps: int, seeds: int, final=None, table=None):
  """A laptop study: its cells, seeds 0..seeds-1, the NN curve, the final evals (default
  `final_evals(data)`), the raw-pixel row and the table and curve columns every laptop study shows."""
  c = mlc.ConfigDict()
  c.name, c.description, c.cells, c.seeds = name, description, list(cells), tuple(range(seeds))
  c.curve_evals = curve_evals(data, max(1, steps // 4))
  c.final_evals = final if final is not None else final_evals(data)
  c.pixel_baseline = True
  c.table, c.curves = tuple(table or TABLE), CURVES
  return c


def curve_evals(data: str, every: int) -> dict:
  return {"nn_curve": dict(type="nn_loo", data=data, split="test", batch_size=250, every_steps=every,
                           feature="pooled_pre_norm")}


TABLE = ("nn/top1", "knn/top1_k20", "linear/top1", "collapse/sim_online")
CURVES = ("nn_curve/top1", "sim_trg", "sim_pred")
