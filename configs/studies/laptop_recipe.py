"""The sweep for a laptop-scale Latent MIM recipe: one knob at a time from the methods study's
Latent MIM cell (configs/studies/laptop_methods.py: the small ViT of configs/studies/laptop.py,
7 of 64 patches visible, gap 1 px, crops of 20-100 % area, blr 1.5e-3, EMA from 0.99), at a fixed
number of steps, to find what moves NN and the linear probe against raw pixels.

    lmim-study --config configs/studies/laptop_recipe.py:data=shapes10k --workdir workdirs/recipe_shapes10k

`knobs=a+b` runs only those rows; a sweep at another `steps` is its own study (its name says the
length), e.g. the longer runs:

    lmim-study --config configs/studies/laptop_recipe.py:data=shapes10k,steps=2400,knobs=w128_d6+w128_d6_crop0.5 \
        --workdir workdirs/recipe_shapes10k_2400

Besides the study's final evals (NN, k-NN, linear probe, collapse), each cell reports NN on
the EMA target encoder and on the mean patch token of blocks 2 and 3 (the probe's layer is a
choice of the recipe too), all by the official leave-one-out protocol; raw pixels by the same
protocol as the last row.
"""
from configs.studies import laptop
from configs.studies.laptop_methods import METHODS
from lmim import config_lib
from lmim.study import cell

# One knob per row, applied on top of the base cell.
KNOBS = {
    "base": {},
    "crop0.5": {"input.min_crop": 0.5},
    "vis16": {"views.num_vis": 16},
    "vis4": {"views.num_vis": 4},
    "gap0": {"views.patch_gap": 0},
    "blr4e-3": {"optim.blr": 4e-3},
    "ema0.996": {"ema.momentum": 0.996},
    "no_simreg": {"sim_reg.coeff": 0.0},
    "w128_d6": {"model.width": 128, "model.depth": 6},
}
# Rows of two knobs, run only when named (`knobs=`): the wider, deeper ViT with the crops that
# helped the probe, for the longer runs.
COMBINED = {"w128_d6_crop0.5": {"model.width": 128, "model.depth": 6, "input.min_crop": 0.5}}
ROWS = {**KNOBS, **COMBINED}


def get_config(arg=None):
  a = config_lib.parse_arg(arg, choices={"data": laptop.DATASETS}, data="shapes10k", steps=600, seeds=1,
                           knobs="+".join(KNOBS))
  knobs = a.knobs.split("+")
  for k in knobs:
    if k not in ROWS:
      raise config_lib.ConfigArgumentError("knobs", a.knobs, f"'+'-separated names from {', '.join(ROWS)}")
  spec, own = METHODS["latent_mim"]
  base = laptop.model_overrides(a.data, a.steps)
  base.update({k: laptop.visible(20, a.data) if v == "vis" else v for k, v in own.items()})
  final = laptop.final_evals(a.data)
  nn = final["nn"]
  final["nn_ema"] = dict(nn, encoder="ema")
  final["nn_block2"] = dict(nn, feature="block2")
  final["nn_block3"] = dict(nn, feature="block3")
  # A sweep at another length is another study (its own name, folder and table).
  name = f"laptop_recipe_{a.data}" + ("" if a.steps == 600 else f"_{a.steps}steps")
  return laptop.study(name,
                      f"One knob at a time from the Latent MIM cell of the methods study, {a.data}, {a.steps} "
                      f"steps at batch 128, {a.seeds} seed(s) (configs/studies/laptop_recipe.py).",
                      [cell(k, spec, **{**base, **ROWS[k]}) for k in knobs],
                      data=a.data, steps=a.steps, seeds=a.seeds, final=final,
                      table=laptop.TABLE + ("nn_ema/top1", "nn_block2/top1", "nn_block3/top1"))
