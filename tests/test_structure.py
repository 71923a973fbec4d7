"""The seams the folder listing promises: the trainer is blind to the method, models do not read
configs, evaluators see an encoder rather than a method module, and no two modules import each
other. Read from the source (ast), so a stray import or a method name in the trainer fails here."""
import ast
import pathlib
import re

import pytest

from lmim import methods
from lmim.methods import base

ROOT = pathlib.Path(__file__).resolve().parents[1] / "lmim"


def imports_of(path: pathlib.Path) -> set[str]:
  """Every lmim module `path` imports, at top level or inside functions."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
      out |= {f"{node.module}.{a.name}" for a in node.names}
  return {m for m in out if m.startswith("lmim")}


def test_the_trainer_names_no_method_and_no_method_field():
  code = ast.unparse(ast.parse((ROOT / "train.py").read_text()))  # code only: no comments
  code = re.sub(r'"""[\s\S]*?"""', "", code)
  words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", code)}
  method_words = {m.replace("_", "") for m in methods.METHODS} | set(methods.METHODS)
  assert not (words & method_words), words & method_words
  # Method metrics and host state, and the method's config blocks (`views` alone is lmim.views).
  assert not (words & {"sim_trg", "sim_target", "boxes", "crop_boxes", "alpha", "num_vis", "patch_gap"})
  blocks = {"views", "targets", "sim_reg", "loss", "mae", "cmae", "pcae", "data2vec", "ijepa"}
  assert not re.findall(rf"\b(?:cfg|config)\.(?:{'|'.join(blocks)})\b", code)
  assert not re.findall(r"\b(?:has|get)attr\(\s*(?:setup\.)?method\b", code)


@pytest.mark.parametrize("folder, forbidden", [("models", "lmim.config_lib"), ("evaluators", "lmim.methods")])
def test_layers_do_not_import_upwards(folder, forbidden):
  bad = {p.name: sorted(m for m in imports_of(p) if m == forbidden or m.startswith(forbidden + "."))
         for p in (ROOT / folder).glob("*.py")}
  assert not {k: v for k, v in bad.items() if v}


def test_no_two_modules_import_each_other():
  graph = {}
  for p in ROOT.rglob("*.py"):
    name = "lmim." + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    graph[name] = {m for m in imports_of(p) if m != name}
  pairs = sorted((a, b) for a in graph for b in graph[a] if b in graph and a in graph[b] and a < b
                 and not (a.startswith(b + ".") or b.startswith(a + ".")))  # a package and its modules
  assert not pairs, pairs


def test_every_method_implements_the_interface():
  for name in methods.METHODS:
    cls = methods.get(name).METHOD
    assert issubclass(cls, base.Method), name
    assert not getattr(cls, "__abstractmethods__", None), (name, cls.__abstractmethods__)
