"""I-JEPA pretraining in lmim's house: ViT-H/14 at 224 px (16×16 grid), 300 epochs.

    python -m lmim.train --config configs/ijepa_in1k.py \
        --workdir gs://BUCKET/ijepa/vith14_in1k --config.input.data_dir=gs://BUCKET/tfds
    python -m lmim.train --config configs/ijepa_in1k.py:variant=B/16 --workdir ...     # ViT-B/16, 14×14
    python -m lmim.train --config configs/ijepa_in1k.py:runlocal --workdir /tmp/ijepa_smoke

Recipe (facebookresearch/ijepa configs/in1k_vith14_ep300.yaml and src/helper.py `init_opt`):
RandomResizedCrop(0.3, 1), no flip; per batch one target size and one context size; 4 target
blocks (scale 0.15–0.2 and aspect 0.75–1.5 tied to one draw), a context block (scale 0.85–1)
minus the targets; predictor depth 12, width 384, the encoder's 16 heads; EMA momentum linear
0.996 → 1; Smooth-L1; batch 2048, 300 epochs, AdamW (0.9, 0.999), lr 2e-4 → 1e-3 over 40 warmup
epochs then cosine to 1e-6, weight decay cosine 0.04 → 0.4 (none on biases and 1-D parameters).
What lmim does differently (lmim/methods/ijepa.py): target blocks padded to the largest size and
masked, never cut; the context keeps a fixed number of patches instead of the batch minimum;
float32 unless model.dtype=bfloat16 (official: bf16 autocast).
Expected (I-JEPA paper, ViT-H/14 300 ep): linear probe 79.3 on ImageNet-1k.
"""
from lmim import config_lib
from lmim.models import encoder_dims


def get_config(arg=None):
  a = config_lib.parse_arg(arg, variant="H/14", epochs=300, runlocal=False)
  c = config_lib.base_config("ijepa")
  c.model.variant = a.variant
  c.model.grid_size = 16 if a.variant.startswith("H") else 14
  heads = encoder_dims(c.model)["num_heads"]  # the predictor takes the encoder's head count
  c.model.decoder.update(dict(width=384, depth=12, num_heads=heads))
  c.input.data, c.input.split = "imagenet2012", "train"
  c.batch_size = 2048
  c.total_epochs, c.warmup_epochs = float(a.epochs), 40.0
  c.optim.lr = 1e-3  # absolute in the official yaml, as are warmup's 2e-4 and the final 1e-6
  c.checkpoint.every_epochs, c.checkpoint.keep_every_epochs = 1.0, 50.0
  c.evals.nn = config_lib.nn_eval("imagenet2012", "validation", every_epochs=10.0)
  if a.runlocal:
    config_lib.runlocal(c)
    c.optim.lr = None
    c.ijepa.update(dict(num_targets=2, min_context=4))
  return c
