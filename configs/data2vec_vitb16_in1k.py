"""data2vec v1 (vision) pretraining in lmim's house: ViT-B/16, 800 epochs.

    python -m lmim.train --config configs/data2vec_vitb16_in1k.py \
        --workdir gs://BUCKET/data2vec/vitb16_in1k --config.input.data_dir=gs://BUCKET/tfds
    python -m lmim.train --config configs/data2vec_vitb16_in1k.py:runlocal --workdir /tmp/d2v_smoke

Recipe (facebookresearch/data2vec_vision `beit/README.md`, the ViT-B command): BEiT block
masking of 120/196 patches (blocks ≥ 16 patches), EMA teacher at a constant 0.9998 on the
unmasked crop, targets = LN(mean of the LN'd outputs of the top 6 blocks) at masked positions
(LNs without affine, eps 1e-5), linear head, Smooth-L1 β = 2; AdamW (0.9, 0.999), lr 2e-3 at batch
2048 (blr 2.5e-4), 10 warmup epochs from 0, cosine to 1e-5, wd 0.05, gradient clipping 3.0; the
BEiT backbone (shared relative position bias, no absolute positions, layer scale 1e-4, q/v biases),
drop path 0.25, attention dropout 0.05; ColorJitter(0.4) + RandomResizedCrop(0.08, 1) + flip.
What lmim does differently: lmim.methods.data2vec and the README's faithfulness table.
Expected (Latent MIM paper, data2vec ViT-B/16, 800 ep): NN 25.7, LP 60.3.
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
