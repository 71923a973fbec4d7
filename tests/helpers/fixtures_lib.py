"""Golden-fixture folders from the official implementations and the tolerances they set.

Folders come from ../shared/fixtures/<source>/ beside the checkout (the project's reference
material; the repository does not copy them: how they were made is in tests/fixtures/README.md)
and from the colon-separated LMIM_PARITY_FIXTURES environment variable (more folders made the same
way, e.g. other options or sizes); each folder's config.json names its `source`. Where neither
gives a folder of a source, the tests that need one are skipped with the reason, never run on
nothing. Comparisons follow the fixture README: |a − b| ≤ atol + rtol·|b| elementwise.
"""
import json
import os
import pathlib

import numpy as np
import pytest

# The project's shared reference folder beside the checkout (../shared/fixtures).
SHARED_FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "shared" / "fixtures"


def fixture_dirs(source: str) -> list[pathlib.Path]:
  """Every fixture folder of `source` ('official_lmim' or 'official_mae'): ../shared/fixtures'
  first, then LMIM_PARITY_FIXTURES. With none, the calling test (or, at import, its module) is
  skipped with the reason, so a checkout without the shared folder still passes and says why."""
  base = SHARED_FIXTURES / source
  dirs = sorted(p for p in base.iterdir() if (p / "config.json").is_file()) if base.is_dir() else []
  for extra in filter(None, os.environ.get("LMIM_PARITY_FIXTURES", "").split(":")):
    p = pathlib.Path(extra)
    if not (p / "config.json").is_file():
      raise FileNotFoundError(f"LMIM_PARITY_FIXTURES lists {p}, which has no config.json")
    if json.loads((p / "config.json").read_text()).get("source") == source and p.resolve() not in {
        d.resolve() for d in dirs}:
      dirs.append(p)
  if not dirs:
    pytest.skip(f"no '{source}' fixture folder in {base} or LMIM_PARITY_FIXTURES", allow_module_level=True)
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
