"""MAE (He et al., CVPR 2022) pretraining, the official recipe: ViT-B/16, 800 epochs.

    python -m lmim.train --config configs/mae_vitb16_in1k.py \
        --workdir gs://BUCKET/mae/vitb16_in1k --config.input.data_dir=gs://BUCKET/tfds
    python -m lmim.train --config configs/mae_vitb16_in1k.py:runlocal --workdir /tmp/mae_smoke

Recipe (facebookresearch/mae PRETRAIN.md): 224-px RandomResizedCrop(0.2, 1) + flip, mask ratio
0.75, norm-pix MSE on removed patches, 8×512 decoder with 16 heads, MAE's sin-cos table, AdamW
(0.9, 0.95) wd 0.05 with MAE's decay rule, blr 1.5e-4 at batch 4096 (lr 2.4e-3), 40 warmup epochs
from 0, cosine to 0. Published: ViT-B/16 800 ep fine-tune 83.4 (1600 ep 83.6), linear 68.0;
the Latent MIM paper reports MAE 1600 ep NN 12.2, LP 67.8.
Published weights import with `python -m lmim.convert --config configs/mae_vitb16_in1k.py
--checkpoint mae_visualize_vit_base.pth --workdir DIR` (encoder and decoder), or an encoder-only
`mae_pretrain_vit_base.pth` with `--encoder_only`.
"""
from lmim import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="B/16", epochs=800, runlocal=False)
  c = config_lib.base_config("mae")
  c.model.variant = a.variant
  c.model.grid_size = 14
  c.input.data, c.input.split = "imagenet2012", "train"
  c.batch_size = 4096
  c.total_epochs, c.warmup_epochs = float(a.epochs), 40.0
  c.optim.blr, c.optim.weight_decay = 1.5e-4, 0.05
  c.checkpoint.every_epochs, c.checkpoint.keep_every_epochs = 1.0, 50.0
  c.evals.nn = config_lib.nn_eval("imagenet2012", "validation", every_epochs=10.0)
  if a.runlocal:
    config_lib.runlocal(c)
  return c
