"""``pcgraph check`` / ``pcgraph fmt``: exit codes, rendered diagnostics, the JSON report."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pcgraph._cli import COMMANDS, check_report, main
from pcgraph._load import Checked
from pcgraph import EdgeIR, ModelIR, NodeIR, QueryIR, TermIR, TransformIR, validate

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
model mlp {
  settings { steps = 5; activity_lr = 0.1 }
  node x: [4]
  node h1, h2: [8]  act = tanh
  node y: [3]       energy = categorical
  x -> h1 -> h2 -> y : dense
  query train { clamp x, y }
  query test  { clamp x; read y }
}
"""

LOOP = """\
model loop {
  node img: [4]
  node a, b: [6]  act = tanh
  node label: [2]
  img -> a -> b -> label : dense
  b -> a : dense
  query train { clamp img, label }
  query test  { clamp img; read label }
}
"""

BAD = """\
model bad {
  node x: [4]
  node h: [8]  act = rleu
  node y: [3]
  x -> h : dense
  h -> yy : dense
  query train { clamp x, y }
}
"""

SYNTAX = """\
model broken {
  node x: [4
  x -> y : dense
}
"""


@pytest.fixture
def write(tmp_path):
    def _write(name, text):
        p = tmp_path / name
        p.write_text(text)
        return str(p)

    return _write


# ---------------------------------------------------------------------- without the parser
def test_dispatch_table_has_check_and_fmt():
    assert {"check", "fmt"} <= set(COMMANDS)
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


def test_missing_file_is_a_diagnostic_not_a_traceback(capsys, tmp_path):
    assert main(["check", str(tmp_path / "nope.pcg")]) == 1
    err = capsys.readouterr().err
    assert "cannot read" in err and "Traceback" not in err


def _loop_ir():
    dense = (TermIR((TransformIR("dense"),)),)
    nodes = (NodeIR("img", (4,)), NodeIR("a", (6,)), NodeIR("b", (6,)), NodeIR("label", (2,)))
    edges = tuple(EdgeIR(u, v, dense) for u, v in
                  [("img", "a"), ("a", "b"), ("b", "label"), ("b", "a")])
    amort = (EdgeIR("img", "b", dense, amortised=True),)
    qs = (QueryIR("train", clamp=("img", "label")), QueryIR("test", clamp=("img",), read=("label",)))
    return ModelIR("loop", nodes, edges, amort, qs)


def test_check_report_fields_from_ir():
    m = _loop_ir()
    r = check_report("loop.pcg", Checked(m, validate(m), {}))
    json.dumps(r)  # serialisable
    assert r["model"] == "loop" and r["ok"] is True
    assert r["nodes"][0] == {"name": "img", "shape": [4], "act": "identity", "energy": "gaussian",
                             "precision": 1.0, "prior": None, "init": None}
    assert r["edges"][0] == {"src": "img", "dst": "a",
                             "terms": [{"pre": "identity", "chain": ["dense"], "bias": True}]}
    assert r["amortised"][0]["dst"] == "b"
    # 4*6+6 + 6*6+6 + 6*2+2 + 6*6+6 (energy) + 4*6+6 (amortised)
    assert r["param_count"] == 30 + 42 + 14 + 42 + 30
    g = r["graph"]
    assert g["is_dag"] is False and g["cycles"] == [[["a", "b"], ["b", "a"]]]
    assert g["roots"] == ["img"] and g["leaves"] == ["label"] and g["longest_path"] is None
    train, test = r["queries"]
    assert train["forward"] == {"feasible": False, "reason": "graph has a cycle a -> b -> a",
                                "cycle": [["a", "b"], ["b", "a"]], "unclamped_roots": []}
    assert train["init_plan"] == {"a": "mem", "b": "amortised", "img": "clamped",
                                  "label": "clamped"}
    assert test["init_plan"]["label"] == "mem"
    assert r["diagnostics"] == []


# ------------------------------------------------------------------------- with the parser
def test_check_valid_file_exits_0(capsys, write):
    path = write("mlp.pcg", GOOD)
    assert main(["check", path]) == 0
    out = capsys.readouterr()
    assert "ok (model mlp" in out.out and out.err == ""


def test_check_bad_file_renders_all_diagnostics(capsys, write):
    path = write("bad.pcg", BAD)
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:22: error: node 'h': activation 'rleu' is unknown" in err
    assert f"{path}:6:8: error: edge h -> yy names undefined node 'yy'" in err
    assert "    h -> yy : dense\n" in err and "\n           ^~\n" in err
    assert "hint: did you mean 'y'?" in err
    assert f"{path}:4:8: error: node 'y' has no energy edges" in err
    assert "Traceback" not in err


def test_check_syntax_error_is_rendered_not_raised(capsys, write):
    path = write("broken.pcg", SYNTAX)
    assert main(["check", path]) == 1
    err = capsys.readouterr().err
    assert f"{path}:" in err and "error" in err and "Traceback" not in err


def test_check_several_files_reports_every_one(capsys, write):
    good, bad = write("mlp.pcg", GOOD), write("bad.pcg", BAD)
    assert main(["check", good, bad]) == 1
    out = capsys.readouterr()
    assert "mlp.pcg: ok" in out.out and "bad.pcg: 3 error(s)" in out.err


def test_warnings_do_not_fail(capsys, write):
    text = GOOD.replace("  settings", "  param unused = 3\n  settings")
    assert main(["check", write("w.pcg", text)]) == 0
    err = capsys.readouterr().err
    assert "warning: parameter 'unused' is never used" in err


def test_check_json_one_file_is_an_object(capsys, write):
    assert main(["check", "--json", write("loop.pcg", LOOP)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["model"] == "loop" and doc["ok"] is True
    assert [n["name"] for n in doc["nodes"]] == ["img", "a", "b", "label"]
    assert {(e["src"], e["dst"]) for e in doc["edges"]} == {
        ("img", "a"), ("a", "b"), ("b", "label"), ("b", "a")}
    assert doc["param_count"] == 30 + 42 + 14 + 42
    assert doc["graph"]["is_dag"] is False
    assert doc["graph"]["cycles"] == [[["a", "b"], ["b", "a"]]]
    q = {q["name"]: q for q in doc["queries"]}
    assert q["train"]["forward"]["feasible"] is False
    assert q["train"]["forward"]["reason"] == "graph has a cycle a -> b -> a"
    assert q["test"]["init_plan"] == {"a": "mem", "b": "mem", "img": "clamped", "label": "mem"}


def test_check_json_several_files_is_a_list(capsys, write):
    rc = main(["check", "--json", write("mlp.pcg", GOOD), write("bad.pcg", BAD),
               write("broken.pcg", SYNTAX)])
    assert rc == 1
    docs = json.loads(capsys.readouterr().out)
    assert [d["ok"] for d in docs] == [True, False, False]
    mlp = docs[0]
    assert mlp["graph"]["is_dag"] and mlp["graph"]["longest_path"] == 3
    assert mlp["queries"][1]["forward"] == {"feasible": True,
                                            "reason": "DAG with every root clamped",
                                            "cycle": [], "unclamped_roots": []}
    assert mlp["queries"][1]["init_plan"] == {"h1": "forward", "h2": "forward", "x": "clamped",
                                              "y": "forward"}
    assert mlp["param_count"] == (4 * 8 + 8) + (8 * 8 + 8) + (8 * 3 + 3)
    codes = {d["code"] for d in docs[1]["diagnostics"]}
    assert {"unknown-activation", "undefined-name"} <= codes
    assert docs[2]["model"] is None and docs[2]["diagnostics"]


def test_fmt_prints_canonical_text(capsys, write):
    from pcgraph import parse_model

    assert main(["fmt", write("mlp.pcg", GOOD)]) == 0
    text = capsys.readouterr().out
    assert "model mlp" in text
    assert parse_model(text).nodes == parse_model(GOOD).nodes


def test_fmt_bad_file_exits_1(capsys, write):
    assert main(["fmt", write("bad.pcg", BAD)]) == 1
    assert "undefined node 'yy'" in capsys.readouterr().err


def test_repository_models_check(capsys):
    files = sorted(str(p) for p in (ROOT / "models").glob("*.pcg"))
    assert len(files) >= 9
    assert main(["check", *files]) == 0, capsys.readouterr().err


def test_python_dash_m_without_jax(write):
    """``python -m pcgraph check`` works in a fresh process and never imports JAX."""
    proc = subprocess.run([sys.executable, "-m", "pcgraph", "--help"], capture_output=True,
                          text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and "check" in proc.stdout and "fmt" in proc.stdout
    assert "Traceback" not in proc.stderr
    path = write("bad.pcg", BAD)
    code = (
        "import sys, runpy\n"
        f"sys.argv = ['pcgraph', 'check', {path!r}]\n"
        "try:\n    runpy.run_module('pcgraph', run_name='__main__')\n"
        "except SystemExit as e:\n    rc = e.code\n"
        "assert 'jax' not in sys.modules, 'check imported jax'\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 1
    assert "error" in proc.stderr
