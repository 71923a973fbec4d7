"""Load a pretrained encoder from a workdir for probing: params plus a pure apply function.

    from lmim import probe
    enc = probe.load_encoder("workdirs/demo", which="ema")      # latest step; or step=N
    out = enc.apply(enc.params, images)    # images (B, g·p, g·p, C), normalised with enc.mean/std
    out["pooled"]        # (B, D) mean of patch tokens before the final LayerNorm (official NN feature)
    out["patch_tokens"]  # (B, g·g, D) after the final LayerNorm
    out["cls"]           # (B, D) CLS after the final LayerNorm (absent for CLS-free encoders)

Works on any lmim workdir and on converted official checkpoints (lmim.convert). Only the
requested item is read, so probing an EMA encoder never touches the optimiser state.
"""
import dataclasses
from typing import Any, Callable

import jax
import ml_collections as mlc

from lmim import config_lib, methods, sharding
from lmim.checkpoint import Checkpointer, abstract_like, find_checkpoint_dir
from lmim.errors import ConfigError
from lmim.evaluators import features


@dataclasses.dataclass
class LoadedEncoder:
  params: Any
  apply: Callable       # (params, images) -> dict of representations; pure, jit-able
  config: mlc.ConfigDict
  method: Any
  step: int
  which: str
  image_size: int       # evaluation resolution: grid_size · patch_size (gap 0)
  mean: tuple
  std: tuple


@dataclasses.dataclass
class Restored:
  """What an evaluation needs from a checkpoint: the method, and only the items asked for."""
  config: mlc.ConfigDict
  meta: dict
  method: Any
  step: int
  params: Any = None        # the full trainable tree ({'encoder', ...}) or {'encoder'} alone
  ema_params: Any = None


def restore(workdir: str, *, step: int | None = None, online: bool = True, ema: bool | str = False,
            mesh=None) -> Restored:
  """Restore the online and/or EMA weights of a workdir's checkpoint (latest, or `step`),
  replicated on `mesh` (default: all devices). `ema="if_kept"` restores the EMA weights when the
  run's method keeps them (else ema_params is None). Raises one-line errors for a missing path,
  an empty workdir, a missing step or `ema=True` on a run without an EMA encoder."""
  ckpt = Checkpointer(find_checkpoint_dir(workdir), create=False)
  try:
    step = ckpt.latest_step() if step is None else step
    meta = ckpt.restore_meta(step)
    cfg = mlc.ConfigDict(config_lib.upgrade(meta["config"]))
    method = methods.build(cfg, meta["data"]["channels"])
    mesh = mesh or sharding.make_mesh(mlc.ConfigDict(dict(data=-1, fsdp=1)))
    params, ema_tree = jax.eval_shape(method.init, jax.random.key(0))
    if ema == "if_kept":
      ema = ema_tree is not None
    if ema and ema_tree is None:
      raise ConfigError("encoder", "ema", f"'online': method {cfg.method} (targets.mode="
                        f"{cfg.get('targets', {}).get('mode', '-')}) keeps no EMA encoder")
    if meta.get("source", {}).get("encoder_only"):
      params = {"encoder": params["encoder"]}  # lmim.convert --encoder_only wrote just the encoder
    repl = sharding.replicated(mesh)
    items = {}
    if online:
      items["params"] = abstract_like(params, repl)
    if ema:
      items["ema_params"] = abstract_like(ema_tree, repl)
    out = ckpt.restore(step, items)
  finally:
    ckpt.close()
  return Restored(config=cfg, meta=meta, method=method, step=step, params=out.get("params"),
                  ema_params=out.get("ema_params"))


def load_encoder(workdir: str, *, step: int | None = None, which: str = "ema", mesh=None) -> LoadedEncoder:
  if which not in ("online", "ema"):
    raise ConfigError("which", which, "'online' (the trained encoder) or 'ema' (the momentum target)")
  r = restore(workdir, step=step, online=which == "online", ema=which == "ema", mesh=mesh)
  method = r.method
  enc_params = r.params["encoder"] if which == "online" else r.ema_params

  def apply(p, images):
    out = method.encode(p, images)
    reps = {"pooled": features.select(out, "pooled_pre_norm"), "patch_tokens": out["patches"],
            "pre_norm": out["pre_norm"], "encoded": out["encoded"]}
    if "cls" in out:
      reps["cls"] = out["cls"]
    return reps

  return LoadedEncoder(params=enc_params, apply=apply, config=r.config, method=method, step=r.step,
                       which=which, image_size=method.eval_image_size,
                       mean=tuple(r.meta["data"]["mean"]), std=tuple(r.meta["data"]["std"]))
