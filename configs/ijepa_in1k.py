"""I-JEPA pretraining in lmim's house: ViT-H/14 at 224 px (16×16 grid), 300 epochs.

    python -m lmim.train --config configs/ijepa_in1k.py \
        --workdir gs://BUCKET/ijepa/vith14_in1k --config.input.data_dir=gs://BUCKET/tfds
    python -m lmim.train --config configs/ijepa_in1k.py:variant=B/16 --workdir ...     # ViT-B/16, 14×14
    python -m lmim.train --config configs/ijepa_in1k.py:runlocal --workdir /tmp/ijepa_smoke

Recipe (facebookresearch/ijepa configs/in1k_vith14_ep300.yaml): RandomResizedCrop(0.3, 1), no
flip; 4 target blocks (scale 0.15–0.2, aspect 0.75–1.5), a context block (scale 0.85–1) minus the
targets; predictor depth 12, width 384; EMA momentum linear 0.996 → 1; Smooth-L1; batch 2048,
300 epochs, 40 warmup epochs, peak lr 1e-3.
Differences, all stated: lmim's schedule warms up from and decays to the same floor, so warmup
starts at 1e-6 rather than 2e-4; weight decay is constant 0.04 (official: cosine 0.04 → 0.4);
mask lengths are static per run (see lmim/methods/ijepa.py); float32 unless model.dtype=bfloat16.
"""
from lmim import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="H/14", epochs=300, runlocal=False)
  c = config_lib.base_config("ijepa")
  c.model.variant = a.variant
  c.model.grid_size = 16 if a.variant.startswith("H") else 14
  c.model.decoder.update(dict(width=384, depth=12, num_heads=12))
  c.input.data, c.input.split = "imagenet2012", "train"
  c.batch_size = 2048
  c.total_epochs, c.warmup_epochs = float(a.epochs), 40.0
  c.optim.update(dict(lr=1e-3, min_lr_frac=1e-3, weight_decay=0.04))
  c.checkpoint.every_epochs, c.checkpoint.keep_every_epochs = 1.0, 50.0
  c.evals.nn = config_lib.nn_eval("imagenet2012", "validation", every_epochs=10.0)
  if a.runlocal:
    config_lib.runlocal(c)
    c.optim.lr = None
    c.ijepa.update(dict(num_targets=2, min_context=4))
  return c
