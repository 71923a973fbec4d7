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


def test_shared_folders_come_first_and_replace_same_named_repository_folders(tmp_path, monkeypatch):
  repo, shared = tmp_path / "repo", tmp_path / "shared"
  _folder(repo, "official_lmim", "a", "repo")
  _folder(repo, "official_lmim", "b", "repo")
  _folder(shared, "official_lmim", "a", "shared")
  _folder(shared, "official_lmim", "c", "shared")
  _folder(shared, "official_mae", "m", "shared")
  monkeypatch.setattr(fixtures_lib, "FIXTURES", repo)
  monkeypatch.setattr(fixtures_lib, "SHARED_FIXTURES", shared)
  monkeypatch.delenv("LMIM_PARITY_FIXTURES", raising=False)
  got = [(d.name, json.loads((d / "config.json").read_text())["tag"]) for d in fixtures_lib.fixture_dirs("official_lmim")]
  assert got == [("a", "shared"), ("c", "shared"), ("b", "repo")]
  shutil.rmtree(shared)   # no shared folder beside the checkout: the repository's own are enough
  assert [d.name for d in fixtures_lib.fixture_dirs("official_lmim")] == ["a", "b"]
  with pytest.raises(FileNotFoundError, match="official_mae"):
    fixtures_lib.fixture_dirs("official_mae")
