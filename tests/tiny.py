"""A tiny Latent MIM config for trainer tests: every code path, seconds per step on 2 CPU cores."""
from lmim import config_lib


def tiny_config(**overrides):
  c = config_lib.base_config()
  c.model.update(dict(variant="Ti/4", width=32, depth=1, num_heads=2, grid_size=4))
  c.model.projector.update(dict(dim=48, depth=2))
  c.model.decoder.update(dict(width=16, depth=1, num_heads=2))
  c.views.update(dict(patch_gap=1, num_vis=4))
  c.input.update(dict(data="mnist5k", split="train", num_threads=2, prefetch=2))
  c.batch_size = 16
  c.sim_reg.group_size = 8
  c.total_epochs, c.warmup_epochs = None, None
  c.total_steps, c.warmup_steps = 6, 2
  c.optim.blr = 1e-2
  c.log_every_steps = 1
  c.checkpoint.update(dict(every_epochs=None, keep_every_epochs=None, keep_last=5))
  c.checkpoint.every_steps = 3
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c
