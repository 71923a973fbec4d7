"""Latent MIM at small compute on the datasets researchers have at hand: one preset per dataset.
NOT RUN HERE (this project's machines have no accelerator); the sizes below come from
`python -m lmim.plan` (README "Small-compute recipes" lists memory and FLOPs per step).

    python -m lmim.train --config configs/lmim_small.py:data=cifar10 --workdir runs/cifar10
    python -m lmim.train --config configs/lmim_small.py:data=cifar100 --workdir runs/cifar100
    python -m lmim.train --config configs/lmim_small.py:data=stl10 --workdir runs/stl10
    python -m lmim.train --config configs/lmim_small.py:data=tiny_imagenet,root=/data/tiny-imagenet-200 --workdir runs/tin
    python -m lmim.train --config configs/lmim_small.py:data=imagenet100 --workdir runs/in100
    python -m lmim.plan --config configs/lmim_small.py:data=cifar10 --devices 1       # memory, FLOPs

Every preset keeps the official recipe's structure (gap patchify, ~85–90 % of patches masked,
EMA targets 0.99 → 1, PatchDisc τ 0.2, Sim regulariser 0.1 on a 0.75 → 0.25 cosine, a 3-layer
projector, a 3-block cross decoder with visual cues, AdamW (0.9, 0.95) wd 0.05, warmup from 0.25·lr)
and scales the image, the patch, the model and the schedule to the dataset:

  preset         data (split)                 image  patch grid gap visible  encoder    batch  epochs
  cifar10        TFDS cifar10 (train)          32     4     8    1    10/64  ViT-S      512    400
  cifar100       TFDS cifar100 (train)         32     4     8    1    10/64  ViT-S      512    400
  stl10          TFDS stl10 (unlabelled)       96     8     12   2    16/144 ViT-S      512    200
  tiny_imagenet  Tiny-ImageNet-200 folder      64     8     8    1    10/64  ViT-S      512    300
  imagenet100    imagenet2012, CMC's classes   224    16    14   4    20/196 ViT-S      1024   300

The NN metric runs every 10 epochs on each dataset's held-out split (stl10: test; tiny_imagenet:
its val/ reorganised into class folders). TFDS datasets other than ImageNet need TensorFlow to
build: the error of an unprepared one prints the command for a separate environment.
Published Latent MIM numbers exist only for ImageNet (the paper); none are claimed here.
"""
from lmim import config_lib

#                 data, split, eval split, image, patch, gap, visible, batch, epochs
PRESETS = {
    "cifar10": ("cifar10", "train", "test", 32, 4, 1, 10, 512, 400),
    "cifar100": ("cifar100", "train", "test", 32, 4, 1, 10, 512, 400),
    "stl10": ("stl10", "unlabelled", "test", 96, 8, 2, 16, 512, 200),
    "tiny_imagenet": ("folder:{root}", "train", "val", 64, 8, 1, 10, 512, 300),
    "imagenet100": ("imagenet2012", "train", "validation", 224, 16, 4, 20, 1024, 300),
}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, choices={"data": PRESETS}, data="cifar10", root="", runlocal=False)
  data, split, eval_split, image, patch, gap, visible, batch, epochs = PRESETS[a.data]
  if a.data == "tiny_imagenet":
    if not a.root and not a.runlocal:
      from lmim.errors import ConfigArgumentError  # pylint: disable=import-outside-toplevel
      raise ConfigArgumentError("root", a.root, "the Tiny-ImageNet-200 folder (root=/data/tiny-imagenet-200)")
    data = data.format(root=a.root)
  classes = "imagenet100" if a.data == "imagenet100" else None
  c = config_lib.base_config()
  c.model.update(dict(variant=f"S/{patch}", grid_size=image // patch))
  c.model.projector.update(dict(dim=2048, depth=3))
  c.model.decoder.update(dict(width=256, depth=3, num_heads=8))
  c.views.update(dict(patch_gap=gap, num_vis=visible))
  c.sim_reg.group_size = 128
  c.input.update(dict(data=data, split=split, classes=classes))
  c.batch_size = batch
  c.total_epochs, c.warmup_epochs = float(epochs), float(epochs) / 10
  c.checkpoint.every_epochs, c.checkpoint.keep_every_epochs = 5.0, 50.0
  c.evals.nn = config_lib.nn_eval(data, eval_split, every_epochs=10.0, classes=classes)
  if a.runlocal:
    config_lib.runlocal(c)
  return c
