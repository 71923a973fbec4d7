"""PCAE (Li et al., ICLR 2023) pretraining: ViT-B/16, 400 epochs (the released script's defaults).

    python -m lmim.train --config configs/pcae_vitb16_in1k.py \
        --workdir gs://BUCKET/pcae/vitb16_in1k --config.input.data_dir=gs://BUCKET/tfds
    python -m lmim.train --config configs/pcae_vitb16_in1k.py:drop_case=1,random_drop --workdir ...
    python -m lmim.train --config configs/pcae_vitb16_in1k.py:runlocal --workdir /tmp/pcae_smoke

Recipe (caddyless/PCAE main_pretrain.py / submitit_pretrain.py defaults): mask 0.75; EMA teacher
of the encoder (cosine 0.9999 → 1) on the masked patches, without the CLS token, with progressive
token reduction after blocks {0, 4, 8} (drop case 0), keep ratio 0.5 (147 → 73 → 36 → 18 tokens);
student drop path 0 → 0.25; an 8×512 decoder (drop path 0.25 per block) queried at the 18 retained
positions; loss 1 − cos to the per-token standardised teacher tokens; AdamW (0.9, 0.95) wd 0.05
with timm's decay rule, blr 1.5e-4 at the launch script's batch 64 × 16 GPUs = 1024, 40 warmup
epochs from 0, cosine to 0. The paper's Table 4: fine-tune 83.6 at 75% masking; "comparable to
MAE with 1/8 GPU days" — `python -m lmim.benchmark` shows the FLOP saving.
Arguments: epochs, drop_case (0–3), random_drop (the "RD" row), mask_ratio, runlocal.
"""
from lmim import config_lib


def get_config(arg=None):
  a = config_lib.parse_arg(arg, choices={"drop_case": (0, 1, 2, 3)}, variant="B/16", epochs=400,
                          drop_case=0, random_drop=False, mask_ratio=0.75, runlocal=False)
  c = config_lib.base_config("pcae")
  c.model.variant = a.variant
  c.pcae.update(dict(drop_case=a.drop_case, random_drop=a.random_drop, mask_ratio=a.mask_ratio))
  c.input.data, c.input.split = "imagenet2012", "train"
  c.batch_size = 1024
  c.total_epochs, c.warmup_epochs = float(a.epochs), 40.0
  c.checkpoint.every_epochs, c.checkpoint.keep_every_epochs = 1.0, 50.0
  c.evals.nn = config_lib.nn_eval("imagenet2012", "validation", every_epochs=10.0)
  if a.runlocal:
    config_lib.runlocal(c)
    c.model.depth = 3
    c.pcae.update(dict(num_stages=2, drop_case=min(a.drop_case, 3)))
  return c
