"""The Latent MIM paper's ablation ladder at laptop scale: all 17 rows, 3 seeds, on an embedded
dataset — the same switch per row as configs/lmim_ablations.py, on the small ViT of
configs/studies/laptop.py (sizes, counts and steps scaled together, stated there).

    lmim-study --config configs/studies/laptop_ladder.py:data=mnist5k --workdir workdirs/ladder_mnist5k
    lmim-study --config configs/studies/laptop_ladder.py:data=shapes10k --workdir workdirs/ladder_shapes10k

Each cell: `steps` optimiser steps (default 400, about a minute on 2 CPU cores), then the NN
(official leave-one-out 1-NN), k-NN (k 20, train bank), a linear probe (cached features, blr grid)
and the collapse metrics on the test split; raw pixels by the same protocol as the last row.
The decoder-depth row scales 3 → 8 blocks to 2 → 5.
"""
from configs import lmim_ablations
from configs.studies import laptop
from lmim import config_lib
from lmim.study import cell


def get_config(arg=None):
  a = config_lib.parse_arg(arg, choices={"data": laptop.DATASETS}, data="mnist5k", steps=400, seeds=3)
  base = laptop.model_overrides(a.data, a.steps)
  cells = []
  for row, switches in lmim_ablations.ROWS.items():
    o = dict(base)
    o["views.num_vis"] = laptop.visible(switches.get("views.num_vis", 20), a.data)
    o["views.patch_gap"] = 1 if switches.get("views.patch_gap", 4) else 0
    if "model.decoder.depth" in switches:
      o["model.decoder.depth"] = 5
    cells.append(cell(row, f"configs/lmim_ablations.py:row={row},runlocal", **o))
  return laptop.study(f"laptop_ladder_{a.data}",
                      f"The 17 rows of the paper's four ablation tables on {a.data}, {a.steps} steps, "
                      f"{a.seeds} seeds (configs/studies/laptop_ladder.py).",
                      cells, data=a.data, steps=a.steps, seeds=a.seeds)
