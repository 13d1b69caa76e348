"""The public API: what type checkers see, what the interpreter loads, one error base."""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path

import pcgraph

PKG = Path(pcgraph.__file__).parent


def _type_checking_names() -> dict[str, str]:
    tree = ast.parse((PKG / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If)
                 and getattr(n.test, "id", None) == "TYPE_CHECKING")
    out = {}
    for imp in block.body:
        assert isinstance(imp, ast.ImportFrom)
        for a in imp.names:
            assert a.asname == a.name, f"{a.name}: re-export it as `{a.name} as {a.name}`"
            out[a.name] = "." + imp.module if imp.module else "." + a.name
    return out


def test_type_checkers_see_every_lazy_name():
    assert _type_checking_names() == pcgraph._LAZY


def test_every_public_name_resolves():
    for name in pcgraph.__all__:
        assert getattr(pcgraph, name) is not None, name
    assert pcgraph.__version__ == importlib.metadata.version("pcgraph")  # from the metadata


def test_every_error_derives_from_the_base():
    errors = []
    for info in pkgutil.iter_modules([str(PKG)]):
        if info.name in ("__main__",):
            continue
        mod = importlib.import_module(f"pcgraph.{info.name}")
        for name, obj in vars(mod).items():
            if (inspect.isclass(obj) and issubclass(obj, BaseException)
                    and not issubclass(obj, Warning)  # CollapseWarning: a warning, not an error
                    and obj.__module__ == mod.__name__ and not name.startswith("_")):
                errors.append(obj)
    assert len(errors) >= 10
    for e in errors:
        assert issubclass(e, pcgraph.Error), e
    assert issubclass(pcgraph.PcgError, pcgraph.Error)
    assert issubclass(pcgraph.InitError, ValueError)  # the built-in parents are kept


def test_no_module_imports_another_modules_private_name():
    for path in PKG.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                for a in node.names:
                    private = a.name.startswith("_") and not a.name.startswith("__")
                    assert not (private and node.module), f"{path.name} imports {a.name}"


def test_checking_a_model_imports_no_jax():
    code = ("import sys, pcgraph; pcgraph.check(open('models/digits_mlp.pcg').read()); "
            "print('jax' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=PKG.parent, capture_output=True,
                         text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
