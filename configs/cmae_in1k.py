"""CMAE (Mao et al., arXiv 2205.10546) pretraining, as reconstructed in docs/methods.md §1.3
(every choice a knob): ViT-B/16 on ImageNet-1k, or Tiny-ImageNet-200 as in the paper (`tiny=<root>`).

    python -m lmim.train --config configs/cmae_in1k.py \
        --workdir gs://BUCKET/cmae/vitb16_in1k --config.input.data_dir=gs://BUCKET/tfds
    python -m lmim.train --config configs/cmae_in1k.py:tiny=/data/tiny-imagenet-200 --workdir ...
    python -m lmim.train --config configs/cmae_in1k.py:runlocal --workdir /tmp/cmae_smoke

Recipe: two ContrastiveCrop views per image (RandomResizedCrop for the first 20% of training,
then boxes from the model's own patch-token activations, refreshed every 20%, Beta(α, α) centres
with α 0.6 on ImageNet, 0.1 on small datasets), MAE masking 0.75 per view, a 2×256 pixel decoder,
norm-pix MSE on both views, symmetric InfoNCE on the projected CLS tokens (τ 0.2, batch
negatives), position prediction from a pass without position embeddings; λ_con = λ_pos = 1;
MAE's optimiser (blr 1.5e-4, wd 0.05, 40 warmup epochs, cosine to 0). Paper: 65.84% top-1 on
Tiny-ImageNet with ViT-B, +2.89 over MAE under equal conditions.
Tiny-ImageNet: `tiny=<root>` reads `<root>/train/<wnid>/images/*.JPEG` as an image folder at
64 px with 8-px patches (an 8×8 grid); reorganise val/ into class folders to evaluate on it.
"""
from lmim import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="B/16", epochs=800, tiny="", runlocal=False)
  c = config_lib.base_config("cmae")
  c.model.variant = a.variant
  c.input.data, c.input.split = "imagenet2012", "train"
  c.batch_size = 4096
  c.total_epochs, c.warmup_epochs = float(a.epochs), 40.0
  c.cmae.ccrop.alpha = 0.6
  c.checkpoint.every_epochs, c.checkpoint.keep_every_epochs = 1.0, 50.0
  c.evals.nn = config_lib.nn_eval("imagenet2012", "validation", every_epochs=10.0)
  if a.tiny:
    c.input.data, c.input.split = f"folder:{a.tiny}", "train"
    c.model.update(dict(patch_size=8, grid_size=8))
    c.cmae.ccrop.alpha = 0.1
    c.batch_size = 1024
    c.evals.nn = config_lib.nn_eval(f"folder:{a.tiny}", "val", every_epochs=10.0)
  if a.runlocal:
    config_lib.runlocal(c)
    c.cmae.update(dict(con_hidden=128, con_dim=32))
    c.cmae.ccrop.update(dict(alpha=0.1, batch_size=500))
    c.input.split = "train[:1000]"
  return c
