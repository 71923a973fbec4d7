"""Golden-fixture folders from the official implementations and the tolerances they set.

Folders come from ../shared/fixtures/<source>/ beside the checkout where it exists, from
tests/fixtures/<source>/ (in the repository, so the tests need nothing outside it; how they were
made is in tests/fixtures/README.md) and from the colon-separated LMIM_PARITY_FIXTURES environment variable
(more folders made the same way, e.g. other options or sizes); each folder's config.json names its
`source`. Comparisons follow the fixture README: |a − b| ≤ atol + rtol·|b| elementwise.
"""
import json
import os
import pathlib

import numpy as np

# Golden outputs of the official implementations, held in the repository (tests/fixtures/README.md).
FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
# The project's shared reference folder beside the checkout, where present: its fixture folders are
# read first, so folders placed there (other options or sizes) are tested without copying them in.
SHARED_FIXTURES = pathlib.Path(__file__).resolve().parents[3] / "shared" / "fixtures"


def _folders(base: pathlib.Path) -> list[pathlib.Path]:
  return sorted(p for p in base.iterdir() if (p / "config.json").is_file()) if base.is_dir() else []


def fixture_dirs(source: str) -> list[pathlib.Path]:
  """Every fixture folder of `source` ('official_lmim' or 'official_mae'): ../shared/fixtures'
  first, then the repository's own under names not already taken, then LMIM_PARITY_FIXTURES;
  never empty, so the parity tests cannot silently become no tests."""
  base = FIXTURES / source
  dirs = _folders(SHARED_FIXTURES / source)
  dirs += [p for p in _folders(base) if p.name not in {d.name for d in dirs}]
  for extra in filter(None, os.environ.get("LMIM_PARITY_FIXTURES", "").split(":")):
    p = pathlib.Path(extra)
    if not (p / "config.json").is_file():
      raise FileNotFoundError(f"LMIM_PARITY_FIXTURES lists {p}, which has no config.json")
    if json.loads((p / "config.json").read_text()).get("source") == source and p.resolve() not in {
        d.resolve() for d in dirs}:
      dirs.append(p)
  if not dirs:
    raise FileNotFoundError(f"no '{source}' fixture folder in {base} or LMIM_PARITY_FIXTURES")
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
