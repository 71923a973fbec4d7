"""Golden-fixture folders from the official implementations and the tolerances they set.

Folders come from ../shared/fixtures/<source>/ beside the project root and from the
colon-separated LMIM_PARITY_FIXTURES environment variable; each folder's config.json names its
`source`. Comparisons follow the fixture README: |a − b| ≤ atol + rtol·|b| elementwise.
"""
import json
import os
import pathlib

import numpy as np

from conftest import SHARED_FIXTURES


def fixture_dirs(source: str) -> list[pathlib.Path]:
  dirs = []
  base = SHARED_FIXTURES / source
  if base.is_dir():
    dirs += sorted(p for p in base.iterdir() if (p / "config.json").is_file())
  for extra in filter(None, os.environ.get("LMIM_PARITY_FIXTURES", "").split(":")):
    p = pathlib.Path(extra)
    if not (p / "config.json").is_file():
      raise FileNotFoundError(f"LMIM_PARITY_FIXTURES lists {p}, which has no config.json")
    if json.loads((p / "config.json").read_text()).get("source") == source and p not in dirs:
      dirs.append(p)
  return dirs


def load(folder: pathlib.Path):
  hp = json.loads((folder / "config.json").read_text())
  arrays = {name: dict(np.load(folder / f"{name}.npz")) for name in ("params", "inputs", "expected")}
  return hp, arrays["params"], arrays["inputs"], arrays["expected"]


def excess(a, b, *, rtol: float, atol) -> float:
  """max(|a − b| − (atol + rtol·|b|)); ≤ 0 means within tolerance."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, f"shape {a.shape} != expected {b.shape}"
  return float(np.max(np.abs(a - b) - (atol + rtol * np.abs(b)), initial=-np.inf))


def assert_close(a, b, *, rtol: float, atol, name: str):
  e = excess(a, b, rtol=rtol, atol=atol)
  assert e <= 0, f"{name}: exceeds tolerance by {e:.3g} (max |diff| {np.max(np.abs(np.asarray(a) - b)):.3g})"
