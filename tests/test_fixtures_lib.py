"""Where the parity tests find their golden folders (tests/helpers/fixtures_lib.py)."""
import json
import shutil

import pytest

import fixtures_lib


def _folder(root, source, name, tag):
  d = root / source / name
  d.mkdir(parents=True)
  (d / "config.json").write_text(json.dumps({"source": source, "tag": tag}))
  return d


def test_shared_folders_then_listed_ones_and_a_skip_with_the_reason_when_there_are_none(tmp_path, monkeypatch):
  shared = tmp_path / "shared"
  _folder(shared, "official_lmim", "b", "shared")
  _folder(shared, "official_lmim", "a", "shared")
  _folder(shared, "official_mae", "m", "shared")
  extra = _folder(tmp_path / "more", "official_lmim", "x", "listed")
  other = _folder(tmp_path / "more", "official_mae", "y", "listed")
  monkeypatch.setattr(fixtures_lib, "SHARED_FIXTURES", shared)
  monkeypatch.setenv("LMIM_PARITY_FIXTURES", f"{extra}:{other}:{shared / 'official_lmim' / 'a'}")
  got = [(d.name, json.loads((d / "config.json").read_text())["tag"]) for d in fixtures_lib.fixture_dirs("official_lmim")]
  assert got == [("a", "shared"), ("b", "shared"), ("x", "listed")]   # each folder once, sources kept apart
  shutil.rmtree(shared)   # no shared folder beside the checkout
  monkeypatch.delenv("LMIM_PARITY_FIXTURES")
  with pytest.raises(pytest.skip.Exception, match="no 'official_mae' fixture folder"):
    fixtures_lib.fixture_dirs("official_mae")
  monkeypatch.setenv("LMIM_PARITY_FIXTURES", str(tmp_path / "nowhere"))
  with pytest.raises(FileNotFoundError, match="has no config.json"):
    fixtures_lib.fixture_dirs("official_mae")
