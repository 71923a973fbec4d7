"""Evaluation presets: every probe choice fixed as each paper did (docs/methods.md §4).

    python -m lmim.evaluate --workdir WD --config configs/eval.py:preset=official_nn
    python -m lmim.evaluate --workdir WD --config configs/eval.py:preset=all,data_dir=gs://BUCKET/tfds --check
    python -m lmim.evaluate --workdir workdirs/demo --config configs/eval.py:preset=demo

Presets (published ViT-B/16 Latent MIM numbers, 800 epochs, beside the protocol they correspond to):
  official_nn   Latent MIM's NN: leave-one-out 1-NN on ImageNet val, mean of last-block patch tokens
                before the final LN, online encoder, 224 px                          (paper NN 50.1)
  dino_knn      DINO's weighted k-NN: train bank → val, k ∈ {10, 20, 100, 200}, T 0.07, CLS after
                the final LN (DINO probes its teacher; set encoder=ema for EMA-trained methods)
  mae_linear    MAE's linear probe: CLS after the final LN → BN(affine=False, per 512 rows as per GPU)
                → linear, LARS, blr 0.1, batch 16384, 90 epochs (10 warmup), MAE's TF-style
                RandomResizedCrop(0.08, 1) + flip                                    (paper LP 72.0)
  mae_finetune  MAE's fine-tuning: 100 epochs, blr 5e-4 @ 1024, layer decay 0.65, drop path 0.1,
                mixup 0.8 / cutmix 1.0, label smoothing 0.1, RandAugment m9, erasing 0.25, global
                pool + fc_norm                                                        (paper Ft 83.0)
  mae_finetune_vitl  the same for ViT-L/16: 50 epochs, blr 1e-3, layer decay 0.75, drop path 0.2
                (MAE's FINETUNE.md; paper Ft 85.9 for MAE ViT-L)
  dino_davis    DINO's DAVIS-2017 label propagation: 480p, first frame + 7 previous, top-5 within a
                12-patch window, T 0.1; patch tokens after the final LN              (paper J&F 65.5)
  fewshot       K ∈ {1, 2, 4, 8, 16} per class × 3 seeds, logistic regression with C chosen on a val
                split, seven datasets                                                  (paper Table: mean ± std)
  collapse      Sim (diag included, and off-diagonal), effective rank, feature std (paper: Sim)
  pictures      PCA-to-RGB maps, hierarchical-clustering segmentation, NN retrieval grids
  all           every preset above
  demo          the embedded-data set: NN, kNN, a cached-feature linear probe, collapse, pictures
Arguments: preset, data (ImageNet's TFDS name), data_dir, encoder (online|ema), feature (sets the
feature of every evaluator that has one and drops those that do not: `feature=pixels` measures raw
pixels by exactly the same protocols, the baseline beside every representation number).
"""
import ml_collections as mlc

from lmim import config_lib
from lmim.errors import ConfigArgumentError

IMAGENET = "imagenet2012"


def official_nn(a):
  return dict(type="nn_loo", data=a.data, split="validation", data_dir=a.data_dir or None, batch_size=256,
              encoder=a.encoder, feature="pooled_pre_norm")


def dino_knn(a):
  return dict(type="knn", data=a.data, split="validation", train_split="train", data_dir=a.data_dir or None,
              k=(10, 20, 100, 200), temperature=0.07, encoder=a.encoder, feature="cls", batch_size=256)


def mae_linear(a):
  return dict(type="linear_probe", data=a.data, split="validation", train_split="train",
              data_dir=a.data_dir or None, encoder=a.encoder, feature="cls", epochs=90, warmup_epochs=10,
              batch_size=16384, blrs=(0.1,), augment=True, min_crop=0.08, crop_style="tf", bn_batch=512)


def mae_finetune(a):
  return dict(type="finetune", data=a.data, split="validation", train_split="train",
              data_dir=a.data_dir or None, encoder=a.encoder, epochs=100, warmup_epochs=5, batch_size=1024, weight_decay=0.05,
              blr=5e-4, layer_decay=0.65, drop_path=0.1, mixup=0.8, cutmix=1.0, label_smoothing=0.1,
              rand_augment="rand-m9-mstd0.5-inc1", random_erasing=0.25)


def mae_finetune_vitl(a):
  """MAE's ViT-L/16 fine-tuning recipe (FINETUNE.md): 50 epochs, blr 1e-3, layer decay 0.75, drop path 0.2."""
  return dict(mae_finetune(a), epochs=50, blr=1e-3, layer_decay=0.75, drop_path=0.2)


def dino_davis(a):
  return dict(type="davis", data="davis/480p", split="validation", data_dir=a.data_dir or None,
              encoder=a.encoder, feature="patch_tokens", short_side=480, multiple=64, n_last_frames=7,
              topk=5, window=12, temperature=0.1, positions="interpolate")


def fewshot(a):
  return dict(type="fewshot", data_dir=a.data_dir or None, encoder=a.encoder)


def collapse(a):
  return dict(type="collapse", data=a.data, split="validation", data_dir=a.data_dir or None)


def pictures(a):
  return dict(type="pictures", data=a.data, split="validation", data_dir=a.data_dir or None,
              encoder=a.encoder)


PRESETS = {"official_nn": official_nn, "dino_knn": dino_knn, "mae_linear": mae_linear,
           "mae_finetune": mae_finetune, "mae_finetune_vitl": mae_finetune_vitl, "dino_davis": dino_davis, "fewshot": fewshot,
           "collapse": collapse, "pictures": pictures}


def demo(a):
  """What runs in minutes on the embedded data (and the README's results table)."""
  m = dict(data="mnist5k", data_dir=a.data_dir or None, encoder=a.encoder)
  return {
      "nn": dict(type="nn_loo", split="test", feature="pooled_pre_norm", batch_size=250, **m),
      "knn": dict(type="knn", split="test", train_split="train", k=(20,), feature="pooled_pre_norm",
                  batch_size=250, **m),
      "linear": dict(type="linear_probe", split="test", train_split="train", feature="pooled_pre_norm",
                     epochs=30, warmup_epochs=3, batch_size=1024, blrs=(1.0, 3.0, 10.0, 30.0, 100.0, 300.0),
                     augment=False, **m),
      "collapse": dict(type="collapse", split="test", **m),
      "pictures": dict(type="pictures", split="test", **m),
  }


def get_config(arg=None):
  a = config_lib.parse_arg(arg, choices={"preset": [*PRESETS, "all", "demo"], "encoder": ("online", "ema")},
                          preset="official_nn", data=IMAGENET, data_dir="", encoder="online", feature="")
  c = mlc.ConfigDict()
  c.preset = a.preset
  c.mesh = dict(data=-1, fsdp=1)
  names = [n for n in PRESETS if n != "mae_finetune_vitl"] if a.preset == "all" else [a.preset]
  evals = demo(a) if a.preset == "demo" else {n: PRESETS[n](a) for n in names}
  if a.feature:
    evals = {n: {**e, "feature": a.feature} for n, e in evals.items() if "feature" in e}
    if not evals:
      raise ConfigArgumentError("feature", a.feature, f"a preset with a feature field (preset={a.preset} has none)")
  c.evals = evals
  return c
