"""The official Latent MIM training step, run from a checkout of the official repository
(`yibingwei-1/LatentMIM`), for `lmim-benchmark --official PATH`: the same geometry as an lmim
config, timed in the same process as lmim's step.

Nothing here is a re-implementation: the network, its forward (view sampling, EMA update, target
encoder, online encoder, decoder, loss, Sim regulariser, the logged Sims) and the gradient step
(`util/misc.py`'s NativeScalerWithGradNormCount) are the official code, unmodified, imported from
PATH. What this module writes is the official `train_one_epoch` loop body for one optimiser step
(accum_iter 1) and the optimiser `main_lmim.py` builds: AdamW (0.9, 0.95) with no weight decay on
biases, norms, embeddings and every 1-d parameter (timm's `param_groups_weight_decay` with the
official no-decay list). `torch.cuda.amp.autocast` is left out: on a CPU it does nothing.

The official models import `to_2tuple`, `Mlp` and `DropPath` from `timm.models.layers`. Where
timm's package cannot be imported because its torchvision does not load beside the installed torch
(the CPU torch on this project's machines: torchvision's wheels on PyPI are CUDA builds), those
three come from timm's own files (`timm/layers/{helpers,mlp,drop}.py`), loaded without timm's
package `__init__`. torch and timm are not in requirements.txt: `pip install torch timm`.
"""
import importlib
import importlib.util
import os
import sys
import types

import numpy as np

from lmim.errors import ConfigError, FlagError

OFFICIAL_FILES = ("models_lmim.py", "vits.py", "xvits.py", "util/misc.py")


def official_hparams(cfg, method) -> dict:
  """The official constructor arguments (LMIM(...)'s names) of a resolved Latent MIM config; a
  config the official code cannot express is a one-line ConfigError naming the field."""
  m = cfg.model
  if cfg.method != "latent_mim":
    raise ConfigError("method", cfg.method, "'latent_mim' with --official (the official code is Latent MIM's)")
  checks = (("model.decoder.type", m.decoder.type, "cross", "'cross' (the official CrossDecoder)"),
            ("targets.mode", method.target_mode, "ema", "'ema' (the official target encoder)"),
            ("model.posemb", m.posemb, "lmim", "'lmim' (the official sin-cos tables)"),
            ("model.qkv_bias", m.qkv_bias, "qkv", "'qkv'"),
            ("model.rel_pos_bias", bool(m.rel_pos_bias), False, "false"),
            ("model.layer_scale", m.layer_scale, None, "None"),
            ("model.scan_layers", bool(m.scan_layers), False, "false (the official names are per block)"),
            ("accum_steps", cfg.accum_steps, 1, "1 (one official step per batch)"),
            ("input channels", method.channels, 3, "3 (the official Patchify reshapes RGB)"))
  for field, value, want, valid in checks:
    if value != want:
      raise ConfigError(field, value, f"{valid} with --official")
  loss = {"patch_disc": "infonce_patches", "norm_mse": "norm_l2"}.get(method.loss_name)
  if loss is None:
    raise ConfigError("loss.name", method.loss_name, "'patch_disc' or 'norm_mse' with --official")
  enc = method.encoder
  return {"grid_size": method.grid_size, "patch_size": method.patch_size, "patch_gap": method.patch_gap,
          "embed_dim": enc.width, "depth": enc.depth, "num_heads": enc.num_heads, "target_depth": enc.depth,
          "decoder_embed_dim": m.decoder.width, "decoder_depth": m.decoder.depth,
          "decoder_num_heads": m.decoder.num_heads, "mlp_ratio": float(m.mlp_ratio),
          "drop": float(m.proj_drop), "attn_drop": float(m.attn_drop), "drop_path": float(m.drop_path),
          "tau": float(cfg.loss.tau), "num_vis": method.num_vis, "avg_vis_mask_token": bool(m.decoder.visual_cues),
          "avg_sim_coeff": float(cfg.sim_reg.coeff), "mask_target": bool(cfg.views.mask_target), "loss": loss,
          "freeze_pe": bool(m.freeze_pe), "mlp_dim": m.projector.dim, "mlp_depth": m.projector.depth}


def _timm_layers():
  """`timm.models.layers` as the official code imports it (see the module docstring)."""
  spec = importlib.util.find_spec("timm")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("--official needs timm (pip install timm)")
  try:
    return importlib.import_module("timm.models.layers")
  except (ImportError, RuntimeError):   # torchvision absent, or its C ops not registering beside this torch
    return _timm_layers_from_files(list(spec.submodule_search_locations)[0])


def _timm_layers_from_files(root: str):
  """to_2tuple, Mlp and DropPath from timm's own files, without timm's package `__init__`."""
  for name in [n for n in sys.modules if n == "timm" or n.startswith("timm.")]:
    del sys.modules[name]                                   # a half-imported timm from the try above
  for name, sub in (("timm", ""), ("timm.layers", "layers"), ("timm.models", "models")):
    pkg = types.ModuleType(name)
    pkg.__path__ = [os.path.join(root, sub)]
    sys.modules[name] = pkg
  helpers = importlib.import_module("timm.layers.helpers")
  mlp = importlib.import_module("timm.layers.mlp")
  drop = importlib.import_module("timm.layers.drop")
  layers = types.ModuleType("timm.models.layers")
  layers.to_2tuple, layers.Mlp, layers.DropPath = helpers.to_2tuple, mlp.Mlp, drop.DropPath
  sys.modules["timm.models.layers"] = layers
  sys.modules["timm.models"].layers = layers
  return layers


def load(path: str):
  """(models_lmim, util.misc) imported from an official checkout at `path`."""
  missing = [f for f in OFFICIAL_FILES if not os.path.isfile(os.path.join(path, f))]
  if missing:
    raise FlagError("official", path, "a checkout of github.com/yibingwei-1/LatentMIM "
                    f"(missing {', '.join(missing)})")
  _timm_layers()
  if path not in sys.path:
    sys.path.insert(0, path)
  return importlib.import_module("models_lmim"), importlib.import_module("util.misc")


def no_weight_decay(name: str, param) -> bool:
  """main_lmim.py's rule: timm's param_groups_weight_decay with every name holding 'bias', 'norm'
  or 'embed' in the no-decay list; timm also spares every 1-d parameter."""
  return param.ndim <= 1 or any(s in name for s in ("bias", "norm", "embed"))


class OfficialStep:
  """The official model, optimiser and loss scaler of one geometry; `step(images)` is one
  iteration of the official `train_one_epoch` (accum_iter 1) on an NCHW float32 batch."""

  def __init__(self, path: str, hp: dict, *, lr: float = 1.5e-4, weight_decay: float = 0.05, momentum: float = 0.99,
               sim_trg: float = 0.75, seed: int = 0, threads: int | None = None):
    import torch  # pylint: disable=import-outside-toplevel
    models_lmim, misc = load(path)
    torch.manual_seed(seed)
    torch.set_num_threads(threads or len(os.sched_getaffinity(0)))   # every core, as XLA:CPU uses them
    kw = {k: v for k, v in hp.items() if k not in ("mlp_dim", "mlp_depth")}
    self.model = models_lmim.LMIM(**kw, norm_layer=_layer_norm(torch), proj_cfg=types.SimpleNamespace(
        mlp_dim=hp["mlp_dim"], mlp_depth=hp["mlp_depth"]))
    self.model.train(True)
    named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in named if no_weight_decay(n, p)], "weight_decay": 0.0},
              {"params": [p for n, p in named if not no_weight_decay(n, p)], "weight_decay": weight_decay}]
    self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    import warnings  # pylint: disable=import-outside-toplevel
    with warnings.catch_warnings():       # GradScaler on a machine without CUDA: disabled, says so
      warnings.simplefilter("ignore")
      self.loss_scaler = misc.NativeScalerWithGradNormCount()
    self.momentum, self.sim_trg, self.torch = momentum, sim_trg, torch
    self.optimizer.zero_grad()

  def trainable_parameters(self) -> int:
    return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

  def step(self, images: np.ndarray) -> float:
    import warnings  # pylint: disable=import-outside-toplevel
    with warnings.catch_warnings():   # the official code's torch.cuda.amp deprecation notices, each step
      warnings.simplefilter("ignore", FutureWarning)
      warnings.simplefilter("ignore", UserWarning)
      loss, _ = self.model(self.torch.from_numpy(images), mom=self.momentum, sim_trg=self.sim_trg, update_ema=True)
      loss_value = loss.item()
      self.loss_scaler(loss, self.optimizer, parameters=self.model.parameters(), update_grad=True)
      self.optimizer.zero_grad()
    return loss_value


def _layer_norm(torch):
  import functools  # pylint: disable=import-outside-toplevel
  return functools.partial(torch.nn.LayerNorm, eps=1e-6)   # build_lmim's norm_layer
