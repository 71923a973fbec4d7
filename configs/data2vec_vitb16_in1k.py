"""data2vec v1 (vision) pretraining in lmim's house: ViT-B/16, 800 epochs.

    python -m lmim.train --config configs/data2vec_vitb16_in1k.py \
        --workdir gs://BUCKET/data2vec/vitb16_in1k --config.input.data_dir=gs://BUCKET/tfds
    python -m lmim.train --config configs/data2vec_vitb16_in1k.py:runlocal --workdir /tmp/d2v_smoke

Recipe (facebookresearch/data2vec_vision, released command): BEiT block masking of 120/196
patches (blocks ≥ 16 patches), EMA teacher at a constant 0.9998 on the unmasked crop, targets =
LN(mean of the LN'd outputs of the top 6 blocks) at masked positions, linear head, Smooth-L1
β = 2; lr 2e-3 at batch 2048 (blr 2.5e-4), 10 warmup epochs, cosine to 0, wd 0.05, gradient
clipping 3.0. Backbone: lmim's ViT (absolute sin-cos positions; the official BEiT backbone has
layer-scale and relative position bias). The Latent MIM paper reports data2vec 800 ep: NN 25.7, LP 60.3.
"""
from lmim import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="B/16", epochs=800, runlocal=False)
  c = config_lib.base_config("data2vec")
  c.model.variant = a.variant
  c.input.data, c.input.split = "imagenet2012", "train"
  c.batch_size = 2048
  c.total_epochs, c.warmup_epochs = float(a.epochs), 10.0
  c.checkpoint.every_epochs, c.checkpoint.keep_every_epochs = 1.0, 50.0
  c.evals.nn = config_lib.nn_eval("imagenet2012", "validation", every_epochs=10.0)
  if a.runlocal:
    config_lib.runlocal(c)
    c.data2vec.update(dict(min_block_patches=4, top_k_layers=2))
  return c
