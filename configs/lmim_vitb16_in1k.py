"""The official Latent MIM ImageNet-1k recipe: ViT-B/16, 800 epochs (docs/latent_mim.md §2).

    python -m lmim.train --config configs/lmim_vitb16_in1k.py \
        --workdir gs://BUCKET/lmim/vitb16_in1k --config.input.data_dir=gs://BUCKET/tfds

Prepare ImageNet once as array_record from the ILSVRC2012 tars (or extracted train/ and val/
folders), no TensorFlow needed:  lmim-prepare imagenet2012 --source <ILSVRC dir> --data_dir=<data_dir>

Recipe: batch 4096 (official: 8 GPUs × 256 × accum 2), blr 1.5e-4 → lr 2.4e-3, warmup 40
epochs from 0.25·peak, cosine to 0.25·peak, AdamW (0.9, 0.95) wd 0.05, gap 4 (280-px crops,
14×14 grid of 16-px patches), 20 visible patches, 3×4096 projector, 3×512 cross decoder with
16 heads and visual cues, PatchDisc τ 0.2, Sim regulariser c = 0.1 on a 0.75 → 0.25 cosine,
computed per group of 256 images (the official per-GPU micro-batch), EMA from 0.99 to 1.
Expected (released checkpoint, ViT-B/16, 800 ep): NN 50.1, linear probe 72.0, fine-tune 83.0.
Cost: about 108.7M + 13.4M trainable parameters; sized for a TPU v4-64 / v5p-64 or 8×A100
(`python -m lmim.benchmark --config configs/lmim_vitb16_in1k.py` prints FLOPs per step).

Arguments (`--config configs/lmim_vitb16_in1k.py:variant=L/16,runlocal`):
  variant   encoder variant (Ti/16, S/16, B/16, L/16, H/14)
  runlocal  a laptop-sized smoke run of the same code path on the embedded data
"""
from lmim import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="B/16", runlocal=False)
  c = config_lib.base_config()
  c.model.variant = a.variant
  c.input.data = "imagenet2012"
  c.input.split = "train"
  c.batch_size = 4096
  c.total_epochs, c.warmup_epochs = 800.0, 40.0
  c.sim_reg.group_size = 256
  c.log_every_steps = 50
  c.checkpoint.every_epochs = 1.0
  c.checkpoint.keep_every_epochs = 50.0
  c.evals.nn = config_lib.nn_eval("imagenet2012", "validation", every_epochs=10.0)
  if a.runlocal:
    config_lib.runlocal(c)
    c.views.update(dict(patch_gap=1, num_vis=10))
    c.sim_reg.group_size = 16
  return c
