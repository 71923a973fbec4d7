"""A 2-cell × 2-seed study of a few steps (tests/test_study.py)."""
import ml_collections as mlc

from lmim.study import cell

SMALL = {"total_steps": 4, "warmup_steps": 1, "model.width": 32, "model.depth": 1, "model.num_heads": 2,
         "model.projector.dim": 64, "model.decoder.width": 32, "model.decoder.depth": 1, "batch_size": 32,
         "sim_reg.group_size": 16, "evals.nn.split": "test[:100]", "evals.nn.at_init": False,
         "checkpoint.every_steps": 2, "log_every_steps": 1}


def get_config(arg=None):
  del arg
  c = mlc.ConfigDict()
  c.name = "tiny"
  c.description = "two visible counts, two seeds"
  c.cells = [cell("vis10", "configs/lmim_demo.py"), cell("vis20", "configs/lmim_demo.py", **{"views.num_vis": 20})]
  c.overrides = tuple(SMALL.items())
  c.seeds = (0, 1)
  c.curve_evals = {"nn_curve": dict(type="nn_loo", data="mnist5k", split="test[:100]", batch_size=50,
                                    every_steps=2, feature="pooled_pre_norm")}
  c.final_evals = {"nn": dict(type="nn_loo", data="mnist5k", split="test[:100]", batch_size=50,
                              feature="pooled_pre_norm"),
                   "collapse": dict(type="collapse", data="mnist5k", split="test[:100]", max_images=50)}
  c.pixel_baseline = True
  c.table = ("nn/top1",)
  c.curves = ("nn_curve/top1", "sim_trg")
  return c
