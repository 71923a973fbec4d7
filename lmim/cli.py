"""Command-line plumbing shared by the entry points: config files, dotted overrides, one-line errors.

`--config path.py[:arg]` loads `get_config(arg)` from a config file and locks it; overrides are
dotted flags (`--config.optim.blr=1e-3`, `--config.input.flip=false`, `--noconfig.input.flip`).
lmim reads these itself, before absl sees the command line, so that every problem with them (a
missing config file, an unknown argument after the colon, an override naming no field, a value of
the wrong type) is one line that names the field and what is valid — with the nearest field name
for a typo — printed before anything is built, compiled or created on disk.

Config paths are looked up as given (relative to the current directory), then inside this
checkout (`configs/x.py`, or just `x` / `x.py` for a file of `configs/`), so the commands work
from any directory once the package is installed (`pip install -e .`).

Errors meant for people (lmim.errors.LmimError) print as `lmim: error: <one line>` and exit 2.
"""
import ast
import difflib
import importlib.util
import pathlib
import re
import shlex
import sys

from absl import app, flags, logging as absl_logging
import ml_collections as mlc

from lmim.errors import ConfigError, LmimError

_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def project_root() -> pathlib.Path | None:
  """The checkout this package was imported from (it has `configs/`), or None for a plain install."""
  root = pathlib.Path(__file__).resolve().parents[1]
  return root if (root / "configs").is_dir() else None


def _quiet_libraries():
  """TFDS logs every dataset-info read at INFO through absl and draws progress bars."""
  absl_logging.set_verbosity(absl_logging.WARNING)
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  tfds.disable_progress_bar()


def fail(message: str):
  print(f"lmim: error: {message}", file=sys.stderr)
  sys.exit(2)


def guard(fn):
  """Run `fn()`; an LmimError becomes one line on stderr and exit status 2."""
  _quiet_libraries()
  try:
    return fn()
  except LmimError as e:
    fail(str(e))


###################################################################################################
# Config files and overrides.
###################################################################################################


def split_config_flags(args: list[str], name: str = "config") -> tuple[str | None, list, list[str]]:
  """Take `--config X`, `--config=X`, `--config.a.b=V`, `--config.a.b V`, `--config.flag` and
  `--noconfig.flag` out of `args` -> (config spec, [(dotted field, text)], the other args)."""
  pattern = re.compile(rf"^--?(no)?{re.escape(name)}(\.[^=]+)?(?:=(.*))?$", re.DOTALL)
  spec, overrides, rest = None, [], []
  i = 0
  while i < len(args):
    arg = args[i]
    if arg == "--":
      rest += args[i:]
      break
    m = pattern.match(arg)
    if not m or (m.group(1) and not m.group(2)):  # not ours (`--noconfig` alone is absl's business)
      rest.append(arg)
      i += 1
      continue
    negated, dotted, value = m.groups()
    if dotted is None:
      if value is None:
        if i + 1 >= len(args):
          fail(f"--{name} needs a value: a config file, e.g. --{name} configs/lmim_demo.py")
        value, i = args[i + 1], i + 1
      spec = value
    else:
      if negated:
        value = "false" if value is None else fail(f"--no{name}{dotted} takes no value (got {value!r})")
      elif value is None:  # `--config.a.b V`, or a bare boolean switch `--config.a.b`
        if i + 1 < len(args) and not args[i + 1].startswith("--"):
          value, i = args[i + 1], i + 1
        else:
          value = "true"
      overrides.append((dotted[1:], value))
    i += 1
  return spec, overrides, rest


def resolve_config_path(path: str) -> pathlib.Path:
  """A config file as given, else inside this checkout; one line listing the configs if absent."""
  p = pathlib.Path(path).expanduser()
  candidates = [p]
  root = project_root()
  if root is not None and not p.is_absolute():
    candidates += [root / p, root / "configs" / p, root / "configs" / f"{p}.py"]
  for c in candidates:
    if c.is_file():
      return c.resolve()
  known = sorted(f.name for f in (root / "configs").glob("*.py") if not f.name.startswith("_")) if root else []
  where = f" or in {root / 'configs'}" if root else ""
  raise LmimError(f"--config {path}: no such config file (looked in {pathlib.Path.cwd()}{where})"
                  + (f"; the configs here are {', '.join(known)}" if known else ""))


def _import_config_module(path: pathlib.Path):
  # Config files import each other as `configs.<name>` and import `lmim`: both need the checkout
  # on sys.path, wherever the command runs from.
  for entry in filter(None, (project_root(), path.parent.parent)):
    if str(entry) not in sys.path:
      sys.path.insert(0, str(entry))
  spec = importlib.util.spec_from_file_location(f"lmim_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise LmimError(f"--config {path}: the file defines no get_config(arg)")
  return module


def load_config(spec: str, overrides=()) -> tuple[mlc.ConfigDict, pathlib.Path]:
  """'path.py[:arg]' plus [(dotted field, text)] -> (the locked config, the file's path)."""
  path_text, _, arg = spec.partition(":")
  path = resolve_config_path(path_text)
  module = _import_config_module(path)
  config = module.get_config(arg) if arg else module.get_config()
  if not isinstance(config, mlc.ConfigDict):
    raise LmimError(f"--config {spec}: get_config returned {type(config).__name__}, not a ConfigDict")
  config.lock()
  apply_overrides(config, overrides)
  return config, path


def _field_kind(node: mlc.ConfigDict, key: str):
  if isinstance(node[key], mlc.ConfigDict):
    return dict
  kind = node.get_type(key)
  return None if kind is type(None) else kind


def _describe(kind) -> str:
  return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
          tuple: "a tuple, e.g. (0.5, 0.5, 0.5)", list: "a list, e.g. [1, 2]"}.get(kind, str(kind))


def parse_value(kind, text: str, field: str):
  """The text of `--config.<field>=<text>` as a value of the field's type (one line if it is not)."""
  stripped = text.strip()
  if stripped in ("None", "none", "null"):
    return None
  try:
    if kind is bool:
      if stripped.lower() not in _TRUE + _FALSE:
        raise ValueError
      return stripped.lower() in _TRUE
    if kind is int:
      number = float(stripped)
      if not number.is_integer():
        raise ValueError
      return int(stripped) if re.fullmatch(r"[+-]?\d+", stripped) else int(number)
    if kind is float:
      return float(stripped)
    if kind is str:
      quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
      return stripped[1:-1] if quoted else text
    if kind in (tuple, list):
      value = ast.literal_eval(stripped)
      return kind(value) if isinstance(value, (tuple, list)) else kind((value,))
  except (ValueError, SyntaxError, TypeError):
    raise ConfigError(field, text, _describe(kind)) from None
  if kind is dict:
    raise ConfigError(field, text, f"a group of fields: set them one by one (--config.{field}.<name>=...)")
  try:  # a field without a fixed type (None by default): a Python literal, else the text itself
    return ast.literal_eval(stripped)
  except (ValueError, SyntaxError):
    return text


def apply_overrides(config: mlc.ConfigDict, overrides) -> mlc.ConfigDict:
  """Set [(dotted field, text)] on a locked config; an unknown field names its nearest sibling."""
  for dotted, text in overrides:
    node, parts = config, dotted.split(".")
    for i, part in enumerate(parts):
      here = ".".join(parts[:i])
      if not isinstance(node, mlc.ConfigDict):
        raise ConfigError(dotted, text, f"config.{here} is a value, not a group of fields")
      if part not in node:
        fields = sorted(node.keys())
        close = difflib.get_close_matches(part, fields, n=1, cutoff=0.6)
        hint = f"did you mean config.{'.'.join(parts[:i] + [close[0]])}? " if close else ""
        where = f"config.{here}" if here else "config"
        raise ConfigError(dotted, text, f"no such field; {hint}{where} has {', '.join(fields)}")
      if i < len(parts) - 1:
        node = node[part]
    key = parts[-1]
    kind = _field_kind(node, key)
    value = parse_value(kind, text, dotted)
    # None only where the config allows it: a field that is None now, or a typed reference
    # (FieldReference), the way configs mark either/or fields such as total_epochs/total_steps.
    nullable = node[key] is None or isinstance(node._fields.get(key), mlc.FieldReference)  # pylint: disable=protected-access
    if value is None and not nullable:
      raise ConfigError(dotted, text, f"cannot be None ({_describe(kind)})")
    try:
      node[key] = value
    except (TypeError, ValueError):
      raise ConfigError(dotted, text, _describe(kind) if value is not None else "cannot be None") from None
  return config


###################################################################################################
# Entry points.
###################################################################################################


def run_app(body, *, config: str | None = "required", default_config: str | None = None,
            argv: list[str] | None = None):
  """absl's app.run for lmim commands. `body(config, config_path)` runs after the flags parse;
  with `config` "required" or "optional", `--config`/`--config.*` are read (and every error in
  them reported in one line) first; an optional config absent gives `body(None, None)`.
  `config=None` commands take no config: `body()`."""
  argv = list(sys.argv if argv is None else argv)
  spec, overrides, rest = split_config_flags(argv[1:]) if config else (None, [], argv[1:])
  if config and "config" not in flags.FLAGS:
    flags.DEFINE_string("config", default_config, "Config file, path.py[:arg]; override fields with "
                        "--config.<field>=<value>.")

  def main(args):
    if len(args) > 1:
      fail(f"unexpected argument(s): {' '.join(args[1:])}")
    if not config:
      return body()
    chosen = spec or default_config
    if chosen is None and config == "optional":
      return body(None, None)
    if chosen is None:
      fail("--config is required: a config file, e.g. --config configs/lmim_demo.py")
    cfg, path = guard(lambda: load_config(chosen, overrides))
    return body(cfg, path)
  app.run(main, argv=[argv[0]] + rest)


def define_distributed_flags():
  """Explicit multi-host settings (else the environment decides; see lmim.distributed)."""
  flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host runs).")
  flags.DEFINE_integer("num_processes", None, "Number of processes in the job.")
  flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).")


def initialize_distributed():
  from lmim import distributed  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  return guard(lambda: distributed.initialize(f.coordinator_address, f.num_processes, f.process_id))


def main_train(train_fn):
  """lmim-train --config configs/x.py[:arg] --workdir DIR [--config.a.b=v ...]

  Exits 0 when training ends or is preempted (after saving), 2 on bad input (one line).
  """
  flags.DEFINE_string("workdir", None, "Where checkpoints, logs and metrics go.")
  define_distributed_flags()
  flags.mark_flags_as_required(["workdir"])

  def body(config, _):
    initialize_distributed()  # before anything asks JAX for devices
    guard(lambda: train_fn(config, flags.FLAGS.workdir, command=shlex.join(sys.argv)))
  run_app(body)


def main_benchmark(benchmark_fn, format_fn, options: dict, default_config: str | None = None):
  """lmim-benchmark / lmim-eval-benchmark --config configs/x.py[:arg] [options] [--nopeak] [--json].
  `options` {name: (default, help)} become flags (bool, int or string by the default) passed to
  `benchmark_fn(config, peak=..., **options)` under their own names."""
  for name, (default, text) in options.items():
    define = (flags.DEFINE_bool if isinstance(default, bool) else flags.DEFINE_string if isinstance(default, str)
              else flags.DEFINE_integer)
    define(name, default, text)
  flags.DEFINE_bool("peak", True, "Measure this machine's matmul peak in the same window (achieved/peak).")
  flags.DEFINE_bool("json", False, "Print the result as JSON.")

  def body(config, _):
    import json  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    result = guard(lambda: benchmark_fn(config, peak=f.peak, **{name: getattr(f, name) for name in options}))
    print(json.dumps(result) if f.json else format_fn(result))
  run_app(body, default_config=default_config)


def main_convert(convert_fn):
  """lmim-convert --config configs/x.py --checkpoint official.pth --workdir DIR"""
  flags.DEFINE_string("checkpoint", None, "Official state dict: .pth (needs torch) or .npz.")
  flags.DEFINE_string("workdir", None, "Empty directory to write the lmim checkpoint into.")
  flags.DEFINE_bool("encoder_only", False, "The checkpoint holds only the encoder (e.g. MAE's "
                    "mae_pretrain_vit_*.pth): fill exactly the encoder.")
  flags.mark_flags_as_required(["checkpoint", "workdir"])

  def body(config, _):
    out = guard(lambda: convert_fn(config, flags.FLAGS.checkpoint, flags.FLAGS.workdir,
                                    encoder_only=flags.FLAGS.encoder_only))
    print(f"wrote {out}")
  run_app(body)
