"""Config plumbing: the field set and its defaults, `get_config(arg)` arguments, duration
resolution (steps or epochs) and the checks that run before anything compiles.

Every config file under `configs/` starts from `base_config()`, which holds the official
Latent MIM defaults (docs/latent_mim.md §2), and changes what its recipe changes. Because the config is
locked, a typo in a command-line override (`--config.optim.blr=...`) fails loudly.
"""
import copy
import difflib
import math

import ml_collections as mlc

from lmim.errors import ConfigArgumentError, ConfigError

# Fields that may change when a run is resumed: they do not change what is being trained.
RESUMABLE_FIELDS = ("log_every_steps", "profile_steps", "checkpoint", "evals", "mesh", "fsdp_min_size_mb",
                    "input.data_dir", "input.num_threads", "input.prefetch", "model.remat", "debug")
# Fields renamed since a checkpoint may have been saved: old dotted name -> new. A saved config is
# read through `upgrade` wherever it is compared or rebuilt, so older runs resume and probe as before.
RENAMED = {
    "targets.momentum": "ema.momentum",          # one EMA block for every method with targets
    "pcae.momentum": "ema.momentum",
    "data2vec.momentum": "ema.momentum", "data2vec.momentum_end": "ema.momentum_end",
    "ijepa.momentum": "ema.momentum", "ijepa.momentum_end": "ema.momentum_end",
}
# Rematerialisation policies (model.remat): what a block keeps from the forward pass for the
# backward pass; everything else is recomputed. Numerics are unchanged (tests/test_scale.py).


def base_config(method: str = "latent_mim") -> mlc.ConfigDict:
  """Fields shared by every method, plus the method's own block(s) from `add_config`."""
  from lmim import methods  # pylint: disable=import-outside-toplevel
  c = mlc.ConfigDict()
  c.method = method
  c.seed = 0

  c.model = mlc.ConfigDict(dict(
      variant="B/16",          # Ti, S, B, L, H (+ '/patch'); width/depth/num_heads/patch_size override
      width=None, depth=None, num_heads=None, patch_size=None,
      mlp_ratio=4.0,
      grid_size=14,            # g: patches per side (L = g²)
      freeze_pe=True,          # frozen sin-cos table (official default)
      posemb="lmim",           # sin-cos coordinates: 'lmim' (official Latent MIM) or 'mae'
      dtype="float32",         # matmul dtype; 'bfloat16' for speed on TPU/GPU (softmax, LN, loss stay f32)
      remat="none",            # per-block rematerialisation: 'none', 'full' (keep only block inputs),
                               # 'dots' (keep matmul outputs), 'dots_no_batch' (keep weight-only matmuls)
      attention="plain",       # 'plain' (reference einsums), or fused jax.nn.dot_product_attention:
                               # 'xla' (CPU/TPU) or 'cudnn' (GPU); no attention dropout when fused
      cotangent_barriers="auto",  # 'auto' (on under XLA:CPU), 'on', 'off': a fusion boundary on the
                               # residual stream's gradient, same values (lmim.models.layers)
      scan_layers=False,       # encoder blocks as one lax.scan over stacked weights: compile time and
                               # code size independent of depth (weights saved as blocks/<leaf>[depth])
      # Regularisers of the online/student encoder in training (off in the official Latent MIM;
      # random draws per example, so sharded and accumulated steps equal one device's):
      drop_path=0.0,           # stochastic depth, linear ramp 0 -> drop_path over the blocks
      attn_drop=0.0,           # dropout on attention weights
      proj_drop=0.0,           # dropout after attn.proj and in the MLP
      # Backbone options of other methods' official encoders (data2vec's BEiT, I-JEPA's init):
      layer_scale=mlc.FieldReference(None, field_type=float),  # γ init of layer scale; None = off
      qkv_bias="qkv",          # 'qkv', or 'qv' (BEiT: q and v biases, no k bias)
      rel_pos_bias=False,      # one BEiT relative position bias shared by every block
      abs_pos=True,            # absolute position table added to the patch embeddings
      init="xavier",           # kernels: 'xavier' (official Latent MIM/MAE), 'trunc_normal', 'beit'
      projector=dict(dim=4096, depth=3),
      decoder=dict(type="cross", width=512, depth=3, num_heads=16, visual_cues=True, drop_path=0.0),
  ))
  c.batch_size = 4096          # global, per optimiser step
  c.accum_steps = 1            # micro-batches per optimiser step
  c.total_epochs = mlc.FieldReference(800.0, field_type=float)
  c.total_steps = mlc.FieldReference(None, field_type=int)
  c.warmup_epochs = mlc.FieldReference(40.0, field_type=float)
  c.warmup_steps = mlc.FieldReference(None, field_type=float)
  c.optim = mlc.ConfigDict(dict(
      blr=1.5e-4,              # lr = blr · batch_size / 256 unless `lr` is set
      lr=mlc.FieldReference(None, field_type=float),
      min_lr_frac=0.25,        # the schedule's floor as a fraction of the peak ...
      min_lr=mlc.FieldReference(None, field_type=float),           # ... or absolute (data2vec, I-JEPA)
      warmup_start_lr=mlc.FieldReference(None, field_type=float),  # None: warmup starts at the floor
      weight_decay=0.05,
      weight_decay_end=mlc.FieldReference(None, field_type=float),  # cosine to this (I-JEPA); None = constant
      b1=0.9, b2=0.95, eps=1e-8,
      grad_clip_norm=mlc.FieldReference(None, field_type=float),
  ))

  c.input = mlc.ConfigDict(dict(
      data="imagenet2012",     # TFDS name, 'mnist5k' (embedded) or 'folder:/path'
      data_dir=mlc.FieldReference(None, field_type=str),
      split="train",
      classes=None,            # a class subset: 'imagenet100' (CMC's list, shipped), a file or a list
      min_crop=0.2,            # RandomResizedCrop scale lower bound
      flip=True,               # random horizontal flip
      color_jitter=0.0,        # ColorJitter(s, s, s) before the crop (data2vec: 0.4); 0 = none
      mean=mlc.FieldReference(None, field_type=tuple),  # None: the dataset's statistics
      std=mlc.FieldReference(None, field_type=tuple),
      num_threads=8, prefetch=4,
  ))
  c.evals = mlc.ConfigDict()   # name -> dict(type=..., every_steps|every_epochs, at_init, ...)

  c.mesh = mlc.ConfigDict(dict(data=-1, fsdp=1))  # one axis may be -1 = all remaining devices
  c.fsdp_min_size_mb = 4.0     # parameters smaller than this stay replicated

  c.log_every_steps = 50
  # 'a:b' writes a jax.profiler trace of steps a..b-1 (0-based) to <workdir>/profile, for
  # TensorBoard's profile tab or Perfetto; None traces nothing.
  c.profile_steps = mlc.FieldReference(None, field_type=str)
  c.checkpoint = mlc.ConfigDict(dict(
      every_steps=mlc.FieldReference(None, field_type=int),
      every_epochs=mlc.FieldReference(1.0, field_type=float),
      keep_last=3,
      keep_every_steps=mlc.FieldReference(None, field_type=int),
      keep_every_epochs=mlc.FieldReference(50.0, field_type=float),
      async_save=True,
  ))
  # Testing switches (may change on resume): nan_at_step poisons that step's loss and gradients,
  # to exercise the non-finite stop (tests/test_faults.py).
  c.debug = mlc.ConfigDict(dict(nan_at_step=mlc.FieldReference(None, field_type=int)))
  methods.get(method).add_config(c)
  return c


def nn_eval(data: str = "imagenet2012", split: str = "validation", every_epochs: float | None = 10.0,
            every_steps: int | None = None, at_init: bool = False, batch_size: int = 256, classes=None) -> dict:
  """The official NN metric as an eval entry (`config.evals.nn = config_lib.nn_eval(...)`)."""
  return dict(type="nn_loo", data=data, split=split, classes=classes, batch_size=batch_size,
              every_steps=every_steps, every_epochs=every_epochs, at_init=at_init, encoder="online",
              feature="pooled_pre_norm")


def apply_dotted(c: mlc.ConfigDict, overrides: dict) -> mlc.ConfigDict:
  """Set fields by dotted name ({'model.decoder.depth': 8}), in place; returns `c`."""
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  return c


def runlocal(c: mlc.ConfigDict) -> mlc.ConfigDict:
  """Shrink any recipe to a laptop smoke run on the embedded data (same code path, seconds)."""
  c.model.update(dict(variant="Ti/4", depth=2, grid_size=7))
  c.model.projector.dim = 256
  c.model.decoder.update(dict(width=64, depth=1, num_heads=4))
  c.input.data, c.input.split = "mnist5k", "train"
  c.batch_size = 32
  c.accum_steps = 1
  c.total_epochs, c.warmup_epochs = None, None
  c.total_steps, c.warmup_steps = 10, 2
  c.log_every_steps = 5
  c.checkpoint.update(dict(every_epochs=None, keep_every_epochs=None, every_steps=5))
  c.evals.nn = nn_eval("mnist5k", "test[:256]", every_epochs=None, every_steps=10, batch_size=128)
  return c


_KIND_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def parse_arg(arg: str | None, choices: dict | None = None, **defaults) -> mlc.ConfigDict:
  """'variant=S/16,runlocal' -> ConfigDict typed by `defaults`; a bare name means True.

  `choices` maps an argument to its valid values. Every problem (an unknown argument, a value of
  the wrong type, a value outside its choices) is one ConfigArgumentError naming the argument and
  what is valid, raised before the config is built.
  """
  choices = choices or {}
  out = mlc.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, has_value, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      close = difflib.get_close_matches(key, list(defaults), n=1)
      hint = f"did you mean '{close[0]}'? " if close else ""
      raise ConfigArgumentError(key, value if has_value else True,
                                f"{hint}this config's arguments are {', '.join(sorted(defaults))}")
    kind = type(defaults[key]) if defaults[key] is not None else str
    if kind is bool:
      if value not in ("", "True", "true", "1", "False", "false", "0"):
        raise ConfigArgumentError(key, value, "true or false (a bare name means true)")
      out[key] = value in ("", "True", "true", "1")
      continue
    if not has_value:
      raise ConfigArgumentError(key, True, f"needs a value: {key}=<{_KIND_WORDS.get(kind, kind.__name__)}>")
    try:
      out[key] = kind(value)
    except (TypeError, ValueError):
      raise ConfigArgumentError(key, value, _KIND_WORDS.get(kind, kind.__name__)) from None
  for key, valid in choices.items():
    if out[key] not in valid:
      raise ConfigArgumentError(key, out[key], f"one of {', '.join(str(v) for v in sorted(valid))}")
  return out


# Durations ------------------------------------------------------------------------------------

def profile_range(value) -> tuple[int, int] | None:
  """profile_steps 'a:b' -> (a, b), the steps a..b-1 to trace; None -> None."""
  if value is None:
    return None
  parts = str(value).split(":")
  try:
    a, b = (int(p) for p in parts) if len(parts) == 2 else (None, None)
  except ValueError:
    a = b = None
  if a is None or not 0 <= a < b:
    raise ConfigError("profile_steps", value, "'a:b' with 0 <= a < b (trace steps a..b-1), or None")
  return a, b


def _steps(cfg, prefix: str, steps_per_epoch: float, required: bool) -> float | None:
  """Exactly one of `<prefix>_steps` / `<prefix>_epochs` may be set; returns steps (maybe fractional)."""
  steps, epochs = cfg.get(f"{prefix}_steps"), cfg.get(f"{prefix}_epochs")
  if steps is not None and epochs is not None:
    raise ConfigError(f"{prefix}_steps", steps, f"set either {prefix}_steps or {prefix}_epochs, not both "
                      f"({prefix}_epochs={epochs}); set the other to None")
  if steps is None and epochs is None:
    if required:
      raise ConfigError(f"{prefix}_steps", None, f"set {prefix}_steps or {prefix}_epochs")
    return None
  return float(steps) if steps is not None else float(epochs) * steps_per_epoch


def resolve(config: mlc.ConfigDict, num_train_examples: int) -> mlc.ConfigDict:
  """A copy with durations in steps, `steps_per_epoch` and the peak learning rate filled in.

  Epochs follow the official loader (drop_last): steps_per_epoch = ⌊N / batch⌋. Total steps
  are rounded to a whole step; warmup may stay fractional, as in the official epoch clock.
  """
  # An unlocked, untyped copy (fractional warmup steps may replace an int); the user's config stays.
  c = mlc.ConfigDict(config.to_dict(), type_safe=False)
  spe = num_train_examples // c.batch_size
  if spe < 1 and (c.total_steps is None or c.warmup_steps is None):
    raise ConfigError("batch_size", c.batch_size,
                      f"larger than the training split ({num_train_examples} examples): durations "
                      "in epochs are undefined; lower it or give total_steps and warmup_steps")
  c.steps_per_epoch = spe
  c.total_steps = int(round(_steps(c, "total", spe, True)))
  c.warmup_steps = _steps(c, "warmup", spe, True)
  c.total_epochs = c.warmup_epochs = None
  for prefix in ("every", "keep_every"):
    s = _steps(c.checkpoint, prefix, spe, False)
    c.checkpoint[f"{prefix}_steps"] = None if s is None else max(1, int(round(s)))
    c.checkpoint[f"{prefix}_epochs"] = None
  for name, ev in c.evals.items():
    s = _steps(ev, "every", spe, False)
    ev.every_steps = None if s is None else max(1, int(round(s)))
    ev.every_epochs = None
  c.optim.lr = c.optim.lr if c.optim.lr is not None else c.optim.blr * c.batch_size / 256
  return c


def validate_run(config, num_devices: int) -> None:
  """Checks on the run (batch, durations, mesh, optimiser); method checks live with the method."""
  from lmim import sharding  # pylint: disable=import-outside-toplevel
  from lmim.models import layers  # pylint: disable=import-outside-toplevel
  if config.batch_size < 1:
    raise ConfigError("batch_size", config.batch_size, "must be >= 1")
  if config.accum_steps < 1:
    raise ConfigError("accum_steps", config.accum_steps, "must be >= 1")
  for k in ("total_steps", "warmup_steps", "total_epochs", "warmup_epochs"):
    v = config.get(k)
    if v is not None and v < 0:
      raise ConfigError(k, v, "must be >= 0")
  if config.optim.min_lr_frac < 0 or config.optim.min_lr_frac > 1:
    raise ConfigError("optim.min_lr_frac", config.optim.min_lr_frac, "must be in [0, 1]")
  for k in ("weight_decay", "weight_decay_end", "min_lr", "warmup_start_lr"):
    v = config.optim.get(k)
    if v is not None and v < 0:
      raise ConfigError(f"optim.{k}", v, "must be >= 0" + (" (or None)" if k != "weight_decay" else ""))
  if config.input.get("color_jitter", 0.0) < 0:
    raise ConfigError("input.color_jitter", config.input.color_jitter, "a strength >= 0 (0 = no jitter)")
  for k in ("b1", "b2"):
    if not 0 <= config.optim[k] < 1:
      raise ConfigError(f"optim.{k}", config.optim[k], "must be in [0, 1)")
  layers.remat_policy(config.model.get("remat", "none"))
  profile_range(config.get("profile_steps"))
  nan_at = config.get("debug", {}).get("nan_at_step")
  if nan_at is not None and nan_at < 1:
    raise ConfigError("debug.nan_at_step", nan_at, "a step >= 1 (the step whose loss becomes NaN) or None")
  data, fsdp = sharding.mesh_shape(config.mesh, num_devices)
  dp = data * fsdp
  if config.batch_size % (dp * config.accum_steps):
    raise ConfigError("batch_size", config.batch_size,
                      f"must be divisible by the data-parallel size ({dp} = mesh {data}x{fsdp}) times "
                      f"accum_steps ({config.accum_steps}) = {dp * config.accum_steps}")


def upgrade(saved: dict) -> dict:
  """A saved config dict with its fields under their current names (RENAMED); a copy.

  Where the old fields of the `ema` block leave out the schedule (the methods each had their own),
  the method's current default fills it, so an old run reads as it trained."""
  out = copy.deepcopy(saved)
  moved = False
  for old, new in RENAMED.items():
    (block, leaf), (new_block, new_leaf) = old.split("."), new.split(".")
    if leaf in out.get(block, {}):
      out.setdefault(new_block, {})[new_leaf] = out[block].pop(leaf)
      moved = True
  if moved and "method" in out:
    ema = base_config(out["method"]).get("ema")
    for k, v in (ema.to_dict() if ema is not None else {}).items():
      out["ema"].setdefault(k, v)
  return out


def diff_configs(saved: dict, current: dict, ignore=RESUMABLE_FIELDS, defaults: dict | None = None) -> list[str]:
  """Dotted fields whose values differ, skipping those that may change across a resume.

  A field the checkpoint predates (absent from `saved`) counts as equal when the current value
  is its default in `defaults`: adding a config switch does not orphan older checkpoints."""
  def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
      key = f"{prefix}{k}"
      if isinstance(v, dict):
        out.update(flat(v, key + "."))
      else:
        out[key] = list(v) if isinstance(v, tuple) else v
    return out
  a, b = flat(saved), flat(current)
  for k, v in flat(defaults or {}).items():
    if k not in a and k in b and _same(b[k], list(v) if isinstance(v, tuple) else v):
      a[k] = b[k]
  skip = lambda k: any(k == f or k.startswith(f + ".") for f in ignore)
  return [f"{k}: checkpoint={a.get(k, '<absent>')!r} now={b.get(k, '<absent>')!r}"
          for k in sorted(set(a) | set(b)) if not skip(k) and not _same(a.get(k, "<absent>"), b.get(k, "<absent>"))]


def _same(x, y) -> bool:
  if isinstance(x, float) or isinstance(y, float):
    try:
      return math.isclose(float(x), float(y), rel_tol=1e-12, abs_tol=0.0)
    except (TypeError, ValueError):
      return False
  return x == y
