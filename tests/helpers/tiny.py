"""Tiny configs for trainer and method tests: every code path, seconds per step on 2 CPU cores."""
from lmim import config_lib


def apply(c, overrides: dict):
  return config_lib.apply_dotted(c, overrides)


def tiny_config(method: str = "latent_mim", **overrides):
  """A 4×4-grid (latent_mim: gap 1, 20-px images) model of width 32 on mnist5k, 6 steps."""
  c = config_lib.base_config(method)
  c.model.update(dict(variant="Ti/4", width=32, depth=1, num_heads=2, grid_size=4))
  c.model.projector.update(dict(dim=48, depth=c.model.projector.depth and 2))
  c.model.decoder.update(dict(width=16, depth=1, num_heads=2))
  c.input.update(dict(data="mnist5k", split="train", num_threads=2, prefetch=2))
  c.batch_size = 16
  c.total_epochs, c.warmup_epochs = None, None
  c.total_steps, c.warmup_steps = 6, 2
  c.optim.blr = 1e-2
  c.log_every_steps = 1
  c.checkpoint.update(dict(every_epochs=None, keep_every_epochs=None, keep_last=5))
  c.checkpoint.every_steps = 3
  if method == "latent_mim":
    c.views.update(dict(patch_gap=1, num_vis=4))
    c.sim_reg.group_size = 8
  elif method == "pcae":
    c.model.depth = 3
    c.pcae.update(dict(num_stages=2, keep_ratio=0.5))
  elif method == "data2vec":
    c.model.depth = 2
    c.data2vec.update(dict(min_block_patches=2, top_k_layers=2))
  elif method == "ijepa":
    c.model.grid_size = 5
    c.ijepa.update(dict(num_targets=2, min_context=2))
  elif method == "cmae":
    c.cmae.update(dict(con_hidden=32, con_dim=16))
    c.cmae.ccrop.update(dict(warmup_frac=0.34, interval_frac=0.34, batch_size=500))
    c.input.split = "train[:1000]"
  return apply(c, overrides)
