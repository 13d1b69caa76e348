"""The built wheel carries the grammar: install it elsewhere and parse a model with it.

A file under the top-level ``grammar/`` is only in the wheel because pyproject maps it into the
package (``pcgraph/grammar/pcg.lark``); this test fails if that mapping is lost.
"""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
import pcgraph
from pcgraph import _syntax
from pcgraph._load import parse_model
m = parse_model("model m { node x: [4]; node y: [2]; x -> y : dense; query q { clamp x } }")
print(json.dumps({"package": pcgraph.__file__, "grammar": _syntax.grammar_path(),
                  "edges": [e.key for e in m.edges]}))
"""


def test_installed_wheel_parses_with_its_own_grammar(tmp_path):
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "-o", str(dist)],
                           cwd=ROOT, capture_output=True, text=True)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = dist.glob("pcgraph-*.whl")
    assert "pcgraph/grammar/pcg.lark" in zipfile.ZipFile(wheel).namelist()

    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "--quiet",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(target)
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=elsewhere, env=env, check=True,
                         capture_output=True, text=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert Path(info["package"]).resolve().is_relative_to(target.resolve())
    assert Path(info["grammar"]).resolve() == (target / "pcgraph" / "grammar" / "pcg.lark").resolve()
    assert info["edges"] == ["x->y"]
