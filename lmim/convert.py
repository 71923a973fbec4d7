"""Import official Latent MIM and MAE PyTorch weights into lmim (strict).

    python -m lmim.convert --config configs/lmim_vitb16_in1k.py \
        --checkpoint checkpoint_latest.pth --workdir /path/to/converted
    python -m lmim.convert --config configs/mae_vitb16_in1k.py \
        --checkpoint mae_pretrain_vit_base_full.pth --workdir /path/to/mae_vitb16

A Latent MIM state dict (`module.` prefix optional) holds `encoder.*`, `target_encoder.*` and
`decoder.*`; an MAE one `patch_embed.*`, `blocks.*`, `norm.*` and `decoder_*` (the config's method
says which). Names map mechanically because lmim's modules carry the official names:
    blocks.3.attn.qkv.weight (out, in)  ->  blocks_3/attn/qkv/kernel (in, out)   Linear
    norm1.weight / norm1.bias           ->  norm1/scale / norm1/bias             LayerNorm
    patch_embed.proj.weight (D, C, p, p)->  embed/proj/kernel (p·p·C, D)              Conv2d (MAE)
    cls_token, mask_token               ->  as is
    pos_embed.pos_embeds                ->  checked against lmim's table when frozen, else a parameter
Every official key must be consumed and every lmim parameter filled; otherwise the error lists
the missing and unexpected names. The result is written as an Orbax checkpoint (items `params`
and `ema_params`, step 0) that the probing loader reads like any lmim workdir.
"""
import os
import re

import jax
import numpy as np

from lmim import config_lib, methods
from lmim.checkpoint import Checkpointer
from lmim.errors import CheckpointError
from lmim.models import encoder_dims
from lmim.models.posemb import sincos_table
from lmim.trees import path_name

def load_state_dict(path: str) -> dict[str, np.ndarray]:
  """A `.pth` (needs torch) or `.npz` file -> {official name: float32 array}, `module.` stripped."""
  if path.endswith(".npz"):
    with np.load(path) as f:
      sd = {k: f[k] for k in f.files}
  else:
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise CheckpointError(f"{path}: reading .pth files needs torch (pip install torch==2.13.0), "
                            "or convert the state dict to .npz with numpy first") from None
    obj = torch.load(path, map_location="cpu", weights_only=False)
    for key in ("state_dict", "model"):
      if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
        obj = obj[key]
    sd = {k: v.detach().cpu().float().numpy() for k, v in obj.items() if hasattr(v, "detach")}
  return {re.sub(r"^module\.", "", k): np.asarray(v) for k, v in sd.items()}


# Official name prefixes -> (lmim item, lmim path prefix), per source of the checkpoint.
RENAMES = {
    "official_lmim": [
        (r"^encoder\.", ("params", "encoder/")),
        (r"^target_encoder\.", ("ema_params", "")),
        (r"^decoder\.", ("params", "decoder/")),
    ],
    "official_mae": [
        (r"^patch_embed\.proj\.", ("params", "encoder/embed/proj/")),
        (r"^(cls_token|pos_embed)$", ("params", "encoder/")),
        (r"^blocks\.", ("params", "encoder/blocks.")),
        (r"^norm\.", ("params", "encoder/norm/")),
        (r"^decoder_embed\.", ("params", "decoder/embed/")),
        (r"^(mask_token)$", ("params", "decoder/")),
        (r"^decoder_pos_embed$", ("params", "decoder/pos_embed")),
        (r"^decoder_blocks\.", ("params", "decoder/blocks.")),
        (r"^decoder_norm\.", ("params", "decoder/norm/")),
        (r"^decoder_pred\.", ("params", "decoder/pred/")),
    ],
}


def official_to_lmim(name: str, source: str = "official_lmim"):
  """Official name -> (lmim item, lmim path ending in the official leaf name), or None.

  'encoder.blocks.0.attn.qkv.weight' -> ('params', 'encoder/blocks_0/attn/qkv/weight');
  position tables end in 'pos_embed' ('encoder.pos_embed.pos_embeds' -> 'encoder/pos_embed').
  """
  for pattern, (item, prefix) in RENAMES[source]:
    m = re.match(pattern, name)
    if m:
      rest = name[m.end():] if not prefix.endswith("pos_embed") else ""
      path = prefix + (m.group(1) if m.groups() else "") + rest
      path = re.sub(r"blocks\.(\d+)\.", r"blocks_\1/", path).replace(".", "/")
      return item, re.sub(r"pos_embed/pos_embeds$", "pos_embed", path)
  return None


def lmim_to_official(item: str, path: str, value):
  """Inverse of `official_to_lmim` for one leaf: ('params', 'encoder/blocks_0/attn/qkv/kernel', w)
  -> ('encoder.blocks.0.attn.qkv.weight', wᵀ)."""
  parts = path.split("/")
  if item == "ema_params":
    parts = ["target_encoder"] + parts
  leaf = parts[-1]
  if leaf == "kernel":
    parts[-1], value = "weight", np.asarray(value).T
  elif leaf == "scale":
    parts[-1] = "weight"
  elif leaf == "pos_embed":
    parts.append("pos_embeds")
  name = ".".join(parts)
  return re.sub(r"blocks_(\d+)", r"blocks.\1", name), value


def to_official(trees: dict) -> dict:
  """{'params': tree, 'ema_params': tree} -> {official name: numpy array} (for export and tests)."""
  out = {}
  for item, tree in trees.items():
    if tree is None:
      continue
    for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]:
      name, value = lmim_to_official(item, path_name(p), np.asarray(v))
      out[name] = value
  return out


def _kernel(value: np.ndarray) -> np.ndarray:
  """torch Linear (out, in) -> (in, out); Conv2d patch embedding (out, C, p, p) -> (p·p·C, out),
  rows in lmim's (row, col, channel) patch-vector order."""
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0).reshape(-1, value.shape[0])
  return value.T


def convert(state_dict: dict, abstract: dict, pos_tables: dict | None = None,
            source: str = "official_lmim") -> dict:
  """Fill `abstract` ({'params': tree, 'ema_params': tree} of ShapeDtypeStructs) from the state dict.

  `pos_tables` maps (item, module path) of frozen position tables, e.g. ('params', 'encoder')
  or ('ema_params', ''), to the table lmim computes; the official buffers are checked against
  it and consumed. Strict: every official key consumed, every lmim leaf filled, shapes equal.
  """
  targets = {}
  for item, tree in abstract.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      targets[(item, path_name(path))] = leaf
  filled, unexpected, mismatched = {}, [], []
  for name, value in state_dict.items():
    mapped = official_to_lmim(name, source)
    if mapped is None:
      unexpected.append(name)
      continue
    item, path = mapped
    if path.endswith("pos_embed"):
      value = value.reshape(value.shape[-2:])  # MAE stores (1, 1+L, D)
      if (item, path) in targets:  # a learnable table (freeze_pe=False)
        filled[(item, path)] = value
        continue
      table = (pos_tables or {}).get((item, path[:-len("pos_embed")].rstrip("/")))
      if table is None:
        unexpected.append(name)
      elif value.shape != table.shape or np.abs(value - table).max() > 1e-5:
        mismatched.append(f"{name}: differs from lmim's sin-cos table (grid or width mismatch?)")
      continue
    module, _, leaf = path.rpartition("/")
    key = (item, path)
    if leaf == "weight":
      kernel = (item, f"{module}/kernel" if module else "kernel")
      if kernel in targets and value.ndim >= 2:
        filled[kernel] = _kernel(value)
        continue
      key = (item, f"{module}/scale" if module else "scale")
    if key in targets:
      filled[key] = value
    else:
      unexpected.append(name)
  for key, arr in filled.items():
    want = targets[key]
    if tuple(arr.shape) != tuple(want.shape):
      mismatched.append(f"{key[0]}/{key[1]}: official {tuple(arr.shape)} vs lmim {tuple(want.shape)}")
  missing = sorted(f"{i}/{p}" for (i, p) in targets if (i, p) not in filled)
  if missing or unexpected or mismatched:
    parts = []
    if missing:
      parts.append(f"lmim parameters not filled ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      parts.append(f"official keys not consumed ({len(unexpected)}): {', '.join(sorted(unexpected))}")
    if mismatched:
      parts.append(f"shape/value mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    raise CheckpointError("state dict does not match the config: " + " | ".join(parts))
  out = {}
  for item, tree in abstract.items():
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    leaves = [np.asarray(filled[(item, "/".join(str(k.key) for k in p))], dtype=l.dtype) for p, l in flat]
    out[item] = jax.tree_util.tree_unflatten(treedef, leaves)
  return out


def config_from_official(hp: dict):
  """An lmim config from official hyper-parameter names (a fixture's config.json, a Hydra dump);
  `hp['source']` = 'official_mae' reads MAE's constructor arguments, anything else Latent MIM's."""
  if hp.get("source") == "official_mae":
    return _mae_config(hp)
  c = config_lib.base_config()
  m = c.model
  m.variant = "B"
  m.width, m.depth, m.num_heads = hp["embed_dim"], hp["depth"], hp["num_heads"]
  m.patch_size, m.grid_size = hp["patch_size"], hp["grid_size"]
  m.mlp_ratio = float(hp.get("mlp_ratio", 4.0))
  m.freeze_pe = bool(hp.get("freeze_pe", True))
  m.projector.dim, m.projector.depth = hp["mlp_dim"], hp["mlp_depth"]
  m.decoder.width, m.decoder.depth = hp["decoder_embed_dim"], hp["decoder_depth"]
  m.decoder.num_heads = hp["decoder_num_heads"]
  m.decoder.visual_cues = bool(hp["avg_vis_mask_token"])
  c.views.patch_gap, c.views.num_vis = hp["patch_gap"], hp["num_vis"]
  c.views.mask_target = bool(hp["mask_target"])
  c.loss.name, c.loss.tau = hp["loss"], float(hp.get("tau", 0.2))
  c.sim_reg.coeff = float(hp.get("avg_sim_coeff", 0.0))
  c.ema.momentum = float(hp.get("target_mom", 0.99))
  return c


def _mae_config(hp: dict):
  c = config_lib.base_config("mae")
  m = c.model
  m.variant = "B"
  m.width, m.depth, m.num_heads = hp["embed_dim"], hp["depth"], hp["num_heads"]
  m.patch_size, m.grid_size = hp["patch_size"], hp["img_size"] // hp["patch_size"]
  m.mlp_ratio = float(hp.get("mlp_ratio", 4.0))
  m.decoder.width, m.decoder.depth = hp["decoder_embed_dim"], hp["decoder_depth"]
  m.decoder.num_heads = hp["decoder_num_heads"]
  c.mae.mask_ratio, c.mae.norm_pix_loss = float(hp["mask_ratio"]), bool(hp["norm_pix_loss"])
  return c


def source_of(cfg) -> str:
  """Which official code a config's checkpoints come from."""
  return "official_mae" if cfg.method == "mae" else "official_lmim"


def frozen_pos_tables(cfg) -> dict | None:
  """The sin-cos tables the official buffers must equal (None when the tables are parameters)."""
  if not cfg.model.freeze_pe:
    return None
  grid, width, style = cfg.model.grid_size, encoder_dims(cfg.model)["width"], cfg.model.posemb
  enc = sincos_table(width, grid, style)
  tables = {("params", "encoder"): enc, ("params", "decoder"): sincos_table(cfg.model.decoder.width, grid, style)}
  if source_of(cfg) == "official_lmim":
    tables[("ema_params", "")] = enc
  return tables


def target_trees(config, channels: int = 3):
  """(resolved config, method, {'params', 'ema_params'} ShapeDtypeStruct trees) for a config."""
  # Durations do not matter for a converted checkpoint; resolve them on a nominal epoch.
  cfg = config_lib.resolve(config, num_train_examples=max(config.batch_size, 1))
  method = methods.build(cfg, channels)
  abstract = dict(zip(("params", "ema_params"), jax.eval_shape(method.init, jax.random.key(0))))
  return cfg, method, abstract


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def convert_checkpoint(config, checkpoint: str, workdir: str, encoder_only: bool = False) -> str:
  """Read an official checkpoint, convert it strictly, write it as an lmim checkpoint (step 0).

  `encoder_only` is for checkpoints released without decoder and target (MAE's
  `mae_pretrain_vit_*.pth`): then exactly the encoder must be filled, and `params` holds only it.
  """
  cfg, _, abstract = target_trees(config)
  tables = frozen_pos_tables(cfg)
  if encoder_only:
    abstract = {"params": {"encoder": abstract["params"]["encoder"]}}
    tables = {k: v for k, v in (tables or {}).items() if k == ("params", "encoder")} or None
  trees = convert(load_state_dict(checkpoint), abstract, tables, source=source_of(cfg))
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), keep_last=1, async_save=False)
  if ckpt.latest_step() is not None:
    raise CheckpointError(f"{workdir} already holds checkpoints; convert into an empty workdir")
  meta = {"config": cfg.to_dict(), "step": 0, "data_position": 0, "method": cfg.method,
          "source": {"official_checkpoint": os.path.abspath(checkpoint), "encoder_only": encoder_only},
          "data": {"name": cfg.input.data, "channels": 3, "num_examples": None,
                   "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}}
  ckpt.save(0, trees, meta, force=True)
  ckpt.wait()
  ckpt.close()
  return os.path.join(workdir, "checkpoints")


def main():
  """The `lmim-convert` command (python -m lmim.convert)."""
  from lmim import cli  # pylint: disable=import-outside-toplevel
  cli.main_convert(convert_checkpoint)


if __name__ == "__main__":
  main()
