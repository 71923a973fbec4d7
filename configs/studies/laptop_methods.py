"""Latent MIM, MAE, data2vec, I-JEPA, PCAE and CMAE at equal budget: the same small ViT
(configs/studies/laptop.py), the same embedded data, the same number of steps and batch, each
method's own objective and recipe otherwise (its config's `runlocal` variant), 3 seeds.

    lmim-study --config configs/studies/laptop_methods.py:data=mnist5k --workdir workdirs/methods_mnist5k
    lmim-study --config configs/studies/laptop_methods.py:data=shapes10k --workdir workdirs/methods_shapes10k

The table reports NN, k-NN, the linear probe, Sim and the wall-clock side of the budget: the
training rate in images/s (the trainer's logged rate, median over the run; the methods' networks
cost different FLOPs per step, so equal steps are not equal time).
"""
from configs.studies import laptop
from lmim import config_lib, study
from lmim.study import cell

METHODS = {
    "latent_mim": ("configs/lmim_vitb16_in1k.py:runlocal", {"views.num_vis": "vis", "views.patch_gap": 1}),
    "mae": ("configs/mae_vitb16_in1k.py:runlocal", {}),
    "data2vec": ("configs/data2vec_vitb16_in1k.py:runlocal", {"data2vec.min_block_patches": 4,
                                                              "data2vec.top_k_layers": 3}),
    "ijepa": ("configs/ijepa_in1k.py:runlocal", {"ijepa.num_targets": 4, "ijepa.min_context": 4}),
    "pcae": ("configs/pcae_vitb16_in1k.py:runlocal", {"pcae.num_stages": 2}),
    "cmae": ("configs/cmae_in1k.py:runlocal", {"input.split": "train", "cmae.ccrop.batch_size": 500}),
}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, choices={"data": laptop.DATASETS}, data="mnist5k", steps=400, seeds=3)
  base = laptop.model_overrides(a.data, a.steps)
  cells = []
  for name, (spec, own) in METHODS.items():
    o = dict(base)
    for k, v in own.items():
      o[k] = laptop.visible(20, a.data) if v == "vis" else v
    if name == "ijepa":  # the predictor is the decoder: the same small width, the encoder's heads
      o["model.decoder.num_heads"] = 4
    cells.append(cell(name, spec, **o))
  return laptop.study(f"laptop_methods_{a.data}",
                      f"Six methods on the same small ViT, {a.data}, {a.steps} steps at batch 128, "
                      f"{a.seeds} seeds (configs/studies/laptop_methods.py).",
                      cells, data=a.data, steps=a.steps, seeds=a.seeds,
                      table=laptop.TABLE + (study.TRAIN_SPEED,))
