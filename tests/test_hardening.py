"""Hostile and careless input: positioned pcgraph errors (never a traceback, hang or abort),
limits checked before allocation, no code execution from data files, verified checkpoints."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import time
from pathlib import Path

import numpy as np
import pytest

import pcgraph
from pcgraph import PcgError, data as D
from pcgraph._cli import main as cli_main
from pcgraph._diagnostics import normalise_newlines
from pcgraph import Limits, limits
from pcgraph._limits import current, model_size, training_diagnostics

MODELS = Path(__file__).resolve().parent.parent / "models"
SMALL = """model m {
  node x: [4]
  node y: [2]
  x -> y : dense
  query train { clamp x, y }
}
"""


def errors_of(src, **kw) -> list:
    with pytest.raises(PcgError) as info:
        pcgraph.load(src, **kw)
    return list(info.value.errors)


def one_error(src, code=None, **kw):
    errs = errors_of(src, **kw)
    assert errs, "expected an error"
    d = errs[0]
    if code is not None:
        assert d.code == code, d.render()
    return d


def at(src: str, needle: str, nth: int = 0) -> tuple[int, int]:
    """(line, col) of the nth occurrence of ``needle`` in ``src`` (lines split at "\\n")."""
    i = -1
    for _ in range(nth + 1):
        i = src.index(needle, i + 1)
    line = src.count("\n", 0, i) + 1
    return line, i - (src.rfind("\n", 0, i) + 1) + 1


# ------------------------------------------------------------------------------ limits
LIMIT_CASES = {
    # name: (source, the text the caret must be on, a limit change that lets it pass)
    "max_iterations": ("model m { for i in 1..300 { for j in 1..300 { node a{i}_{j}: [1] } } }",
                       "1..300 { node", {"max_iterations": 10**5}),
    "max_node_elements": ("model m { node h: [1000000000] }", "[1000000000]",
                          {"max_node_elements": 10**9}),
    "max_nodes": ("model m { for i in 1..50 { node h{i}: [1] } }", "node h{i}", {"max_nodes": 50}),
    "max_edges": ("model m { node a, b: [1]\n for i in 1..30 { a -> b : dense } }", "a -> b",
                  {"max_edges": 30}),
    "max_params": ("model m { node a, b: [60000]\n a -> b : dense }", "a -> b",
                   {"max_params": 2**32}),
    "max_steps": ("model m { settings { steps = 1000000000000 } }", "steps",
                  {"max_steps": 10**12}),
    "max_expr_depth": ("model m { param p = " + "-" * 1200 + "1 }", "-", {"max_expr_depth": 2000}),
    "max_integer": ("model m { param p = 99999999 * 99999999 * 99999999 }", "99999999",
                    {"max_integer": 10**30}),
    "max_number_chars": ("model m { param p = " + "7" * 5000 + " }", "777",
                         {"max_number_chars": 6000}),  # then it is too large an integer
    "max_nesting": ("model m { " + "".join(f"for i{k} in 1..1 {{ " for k in range(80))
                    + "}" * 80 + " }", "for i64", {"max_nesting": 100}),
}
SMALLER = {"max_nodes": 40, "max_edges": 20, "max_iterations": 10_000}  # the first limit stops


@pytest.mark.parametrize("name", sorted(LIMIT_CASES))
def test_each_limit_is_a_positioned_error_that_can_be_raised(name):
    src, caret, raised = LIMIT_CASES[name]
    with limits(**SMALLER):
        t0 = time.perf_counter()
        d = [e for e in errors_of(src) if e.code == "limit"][0]
        assert time.perf_counter() - t0 < 2
    assert name in d.message and "the limit is" in d.message
    assert f"--limit {name}=N" in d.hint and "PCGRAPH_LIMITS" in d.hint
    assert (d.span.line, d.span.col) == at(src, caret), d.render({"<string>": src})
    with limits(**{**SMALLER, **raised}):  # raised, the same input gets past this limit
        c = pcgraph.check(src)
        assert not [e for e in c.diagnostics if f"({name})" in e.message]


def test_limits_from_the_environment_and_the_command_line(tmp_path, monkeypatch, capsys):
    f = tmp_path / "m.pcg"
    f.write_text("model m { for i in 1..20 { node h{i}: [1] }\n"
                 " for i in 2..20 { h{i-1} -> h{i} : dense }\n query q { clamp h1 } }\n")
    assert cli_main(["check", str(f)]) == 0
    assert cli_main(["--limit", "max_nodes=10", "check", str(f)]) == 1
    assert "(max_nodes)" in capsys.readouterr().err
    monkeypatch.setenv("PCGRAPH_LIMITS", "max_nodes=10")
    assert current().max_nodes == 10
    assert cli_main(["check", str(f)]) == 1
    assert cli_main(["--limit", "max_nodes=100", "check", str(f)]) == 0
    assert cli_main(["--limit", "max_nodez=3", "check", str(f)]) == 2
    assert "did you mean 'max_nodes'" in capsys.readouterr().err
    monkeypatch.delenv("PCGRAPH_LIMITS")
    pcgraph.set_limits()


def test_every_model_fits_the_default_limits_with_room():
    lim = Limits()
    for path in sorted(MODELS.glob("*.pcg")):
        model = pcgraph.load(path)
        params, _ = model_size(model)
        biggest = max(np.prod(n.shape) for n in model.nodes)
        assert params * 4 <= lim.max_params, path
        assert biggest * 4 <= lim.max_node_elements, path
        assert len(model.nodes) * 100 <= lim.max_nodes, path
        assert model.settings.get("steps") * 100 <= lim.max_steps, path
    big = pcgraph.load(MODELS / "resnet128.pcg")
    assert model_size(big)[0] > 30_000_000  # the 128-layer width-512 model is among them


def test_nested_loops_are_refused_before_running():
    src = "model m { for i in 1..3000 { for j in 1..3000 { node a{i}_{j}: [1] } } }"
    t0 = time.perf_counter()
    d = one_error(src, "limit")
    assert time.perf_counter() - t0 < 1 and "9,000,000" in d.message
    assert (d.span.line, d.span.col) == at(src, "1..3000 { node")


def test_training_numbers_and_memory_are_checked_before_allocating():
    model = pcgraph.load(SMALL)
    d = training_diagnostics(model, steps=10**12, batch_size=8)
    assert [x.span.file for x in d] == ["steps"] and "max_steps" in d[0].message
    d = training_diagnostics(model, steps=5, batch_size=8, seed=-1)
    assert d[0].span.file == "seed"
    d = training_diagnostics(model, steps=5, batch_size=64, available=1000)
    assert d[0].code == "out-of-memory" and d[0].span.file == "batch_size"
    assert "GiB" in d[0].message and "smaller batch" in d[0].hint
    assert training_diagnostics(model, steps=5, batch_size=64, available=10**9) == []


def test_fit_refuses_a_step_that_cannot_fit_memory(monkeypatch):
    net = pcgraph.build(pcgraph.load(SMALL))
    monkeypatch.setattr("pcgraph._limits.available_memory", lambda: 1000)
    arrays = {"x": np.zeros((16, 4), np.float32), "y": np.zeros((16, 2), np.float32)}
    with pytest.raises(PcgError, match="training step needs about"):
        pcgraph.fit(net, arrays, epochs=1, batch_size=8, eval_data=False)


# ------------------------------------------------------------------------------ parser robustness
@pytest.mark.parametrize("src", [
    "model m { node g{1, 2}: [3] }",
    "model m { param a = " + "+".join(["1"] * 5000) + " }",
    "model m { param a = " + "-" * 3000 + "1 }",
    "model m { param a = " + "(" * 3000 + "1" + ")" * 3000 + " x }",
    "model m { param a = " + "9" * 5000 + " }",
    "model m { settings { activity_lr = 1e999 - 1e999 } }",
    "model m { settings { weight_lr = 1e999 } }",
    "model m { node z: [3] prior = gaussian(0, 1e999) }",
    "model m { param a = 1e308 * 10 }",
    "model m { param a = 1e308 / 1e-10 }",
    "model m { " + "".join(f"for i{k} in 1..1 {{ " for k in range(490)) + "}" * 490 + " }",
    "model m { node h" + "a" * 40000 + " }",
    "model m { node h{" + "i" * 40000 + ": [1] }",
    "model m\r{ node a: [3] # comment\r node b: [a] }",
])
def test_bad_input_gives_only_pcgraph_errors_quickly(src):
    t0 = time.perf_counter()
    c = pcgraph.check(src)
    assert time.perf_counter() - t0 < 2
    assert not c.ok
    text = normalise_newlines(src).split("\n")
    for d in c.diagnostics:
        assert 1 <= d.span.line <= len(text), d.render(c.sources)
        assert 1 <= d.span.col <= len(text[d.span.line - 1]) + 1, d.render(c.sources)
        d.render(c.sources)


def test_names_with_thousands_of_digits_sort_and_check():
    """Found by the fuzzer: nodes are sorted by name with digit runs compared as numbers, and
    int() refuses over 4,300 digits; the order must not need it."""
    from pcgraph._graph import natural_key

    long_name = "h" + "7" * 5000
    c = pcgraph.check(f"model m {{ node x: [2]; node {long_name}: [2]; x -> {long_name} : dense;"
                      " query q { clamp x } }")
    assert c.ok, [d.render(c.sources) for d in c.diagnostics]
    names = [long_name, "h10", "h2", "h002", "a", "h1x10", "h1x3", "h" + "8" * 40]
    assert sorted(names, key=natural_key) == ["a", "h1x3", "h1x10", "h2", "h002", "h10",
                                              "h" + "8" * 40, long_name]


def test_a_query_of_thousands_of_names_checks_quickly():
    """Found by the fuzzer (2.35 s for a 15 kB input): each name of a query looked back for its
    ``clamp``/``read`` keyword from the query's start, and repeats were counted with list.count,
    both quadratic in the query's length (6,000 names took ~6 s)."""
    names = ", ".join(["a"] * 3000 + ["nosuch"] * 3000)
    src = f"model m {{ node a: [2]; node b: [2]; a -> b : dense; query q {{ clamp {names} }} }}"
    pcgraph.check(SMALL)
    t0 = time.process_time()
    c = pcgraph.check(src)
    assert time.process_time() - t0 < 2.0
    assert [d.code for d in c.diagnostics if d.severity == "error"] == ["undefined-name"]
    assert {d.message for d in c.diagnostics if d.code == "repeated-name"} == {
        "query 'q' lists 'a' twice in `clamp`", "query 'q' lists 'nosuch' twice in `clamp`"}


def test_non_finite_numbers_are_refused_where_they_are_read():
    d = one_error("model m { settings { activity_lr = 1e999 - 1e999 } }", "non-finite")
    assert d.span.col == len("model m { settings { activity_lr = ") + 1
    assert "not finite" in d.message
    d = one_error("model m { node z: [3] prior = gaussian(0, 1e999) }", "non-finite")
    assert (d.span.line, d.span.col) == at("model m { node z: [3] prior = gaussian(0, 1e999) }",
                                           "1e999")


def test_fmt_never_crashes_on_non_finite(tmp_path, capsys):
    f = tmp_path / "m.pcg"
    f.write_text(SMALL.replace("node y: [2]", "node y: [2] energy = gaussian(precision = 1e999)"))
    assert cli_main(["fmt", str(f)]) == 1
    err = capsys.readouterr().err
    assert "not finite" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="non-finite"):
        pcgraph.format_model(pcgraph.load(SMALL).replace(
            settings=pcgraph.SettingsIR((("activity_lr", float("nan")),))))


def test_include_chain_too_deep(tmp_path):
    for i in range(60):
        (tmp_path / f"f{i}.pcg").write_text(f'include "f{i + 1}.pcg"\n')
    (tmp_path / "f60.pcg").write_text("block b() { }\n")
    main = tmp_path / "main.pcg"
    main.write_text('include "f0.pcg"\n' + SMALL)
    d = one_error(main, "limit")
    assert "max_include_depth" in d.message and d.span.line == 1 and d.span.col == 9
    with limits(max_include_depth=100):
        pcgraph.load(main)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_includes_only_regular_pcg_files(tmp_path):
    os.mkfifo(tmp_path / "pipe.pcg")
    (tmp_path / "dir.pcg").mkdir()
    (tmp_path / "secret.txt").write_text("model { password hunter2 }\n")
    for name, words in [("pipe.pcg", "not a regular file"), ("dir.pcg", "a directory"),
                        ("secret.txt", "not a .pcg file")]:
        main = tmp_path / "main.pcg"
        main.write_text(f'include "{name}"\n' + SMALL)
        t0 = time.perf_counter()
        c = pcgraph.check(main)
        assert time.perf_counter() - t0 < 2  # a FIFO never blocks
        [d] = c.diagnostics
        assert words in d.message and (d.span.line, d.span.col) == (1, 9)
        assert "hunter2" not in d.render(c.sources) and "secret.txt" not in c.sources
    fifo = tmp_path / "pipe.pcg"
    d = one_error(fifo, "io")
    assert "not a regular file" in d.message


def test_file_size_limit(tmp_path):
    f = tmp_path / "big.pcg"
    f.write_text(SMALL + "#" * 5000 + "\n")
    with limits(max_file_bytes=1000):
        d = one_error(f, "limit")
        assert "max_file_bytes" in d.message


# ------------------------------------------------------------------------------ positions
BREAKS = ["\n", "\r\n", "\r", "\f", "\x0b", "\x1c", "\x85", "\u2028", "\u2029"]


@pytest.mark.parametrize("br", BREAKS, ids=[repr(b) for b in BREAKS])
def test_carets_count_line_breaks_as_editors_do(br):
    lines = ["model m {", "  node x: [4]  # a comment", "  x -> nope : dense", "}"]
    src = br.join(lines) + br
    c = pcgraph.check(src)
    [d] = [e for e in c.diagnostics if e.code == "undefined-name"]
    assert (d.span.line, d.span.col) == (3, 8), d.render(c.sources)
    shown = d.render(c.sources).split("\n")
    assert shown[1].strip() == "x -> nope : dense" and shown[2].strip() == "^~~~"
    assert len(src.splitlines()) == 4  # Python agrees on the count


@pytest.mark.parametrize("br", ["\r", "\f", "\u2028"])
def test_a_comment_ends_at_any_line_break(br):
    src = f"model m {{ node x: [4] # comment{br} node y: [2]{br} x -> y : dense{br}" \
          f" query q {{ clamp x, y }} }}"
    m = pcgraph.load(src)
    assert [n.name for n in m.nodes] == ["x", "y"]


def test_carets_inside_included_files_loops_and_names(tmp_path):
    (tmp_path / "lib.pcg").write_text("block b(n) {\r\n  node q: [n]\r\n  q -> nosuch : dense\r\n}\r\n")
    main = tmp_path / "main.pcg"
    main.write_text('include "lib.pcg"\nmodel m {\n  use b(3)\n'
                    '  for i in 1..2 {\r    node h{i}: [i // 0]\r  }\n}\n')
    c = pcgraph.check(main)
    got = {d.code: (Path(d.span.file).name, d.span.line, d.span.col) for d in c.diagnostics}
    assert got["division-by-zero"] == ("main.pcg", 5, 17)
    lib_only = tmp_path / "main2.pcg"
    lib_only.write_text('include "lib.pcg"\nmodel m {\n  use b(3)\n}\n')
    c = pcgraph.check(lib_only)
    [d] = [e for e in c.diagnostics if e.code == "undefined-name"]
    assert (Path(d.span.file).name, d.span.line, d.span.col) == ("lib.pcg", 3, 8)
    assert "q -> nosuch" in d.render(c.sources)


def test_syntax_error_inside_a_name_points_into_the_braces():
    src = "model m {\n  node g{1 +* 2}: [3]\n}"
    d = one_error(src, "syntax")
    assert (d.span.line, d.span.col) == at(src, "* 2")
    d = one_error("model m { node g{1, 2}: [3] }", "syntax")
    assert d.span.col == len("model m { node g{1") + 1 and "'}'" in d.message


def test_init_forward_refusal_points_at_the_option_or_the_token():
    src = ("model m {\n  settings { steps = 3; init = forward }\n  node a, b, c: [2]\n"
           "  a -> b : dense\n  b -> c : dense\n  c -> b : dense\n  query q { clamp a }\n}\n")
    c = pcgraph.check(src)
    [d] = [e for e in c.diagnostics if e.code == "forward-infeasible"]
    assert (d.span.line, d.span.col) == at(src, "forward")
    model = pcgraph.load(src.replace("init = forward", "init = mem"))
    with pytest.raises(PcgError) as info:
        pcgraph.init_plan(model, "q", default="forward")
    [d] = info.value.diagnostics
    assert d.span.file == "init" and info.value.render().startswith("init: error: init = forward")
    with pytest.raises(PcgError) as info:
        pcgraph.init_plan(model, "q", overrides={"nosuch": "mem", "a": "mem", "b": "memm"})
    msgs = [(d.span.file, d.code) for d in info.value.diagnostics]
    assert msgs == [("init_overrides", "undefined-name"), ("init_overrides", "init-of-clamped"),
                    ("init_overrides", "unknown-init")]
    assert "<api>" not in info.value.render()


def test_param_override_errors_are_labelled_by_the_option():
    with pytest.raises(PcgError) as info:
        pcgraph.load(MODELS / "resnet_mupc.pcg", params={"depth": float("inf")})
    assert info.value.render().startswith("params: error:") and "finite" in info.value.render()


# ------------------------------------------------------------------------------ speed
def test_error_reporting_is_linear_in_identifier_length():
    for src in ["model m { node " + "a" * 100_000 + " }",
                "model m { x" + "{" + "b" * 99_000 + " }",
                "model m { node h: [3] " + "h" * 100_000 + "{"]:
        t0 = time.perf_counter()
        c = pcgraph.check(src)
        assert time.perf_counter() - t0 < 1.5 and not c.ok


# ------------------------------------------------------------------------------ data files
def _cifar_dir(tmp_path, payload_for_first):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (d / name).write_bytes(payload_for_first if i == 0 else pickle.dumps(good, protocol=2))
    return tmp_path


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_batch_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    root = _cifar_dir(tmp_path, pickle.dumps({b"data": _Evil(marker), b"labels": [1]}))
    with pytest.raises(D.DataFormatError, match="refusing to load (posix|os).system"):
        D.load("cifar10", data_dir=root)
    assert not marker.exists()


def test_truncated_cifar_and_idx_files(tmp_path):
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, protocol=2)
    root = _cifar_dir(tmp_path, good[: len(good) // 2])
    with pytest.raises(D.DataFormatError, match="not a CIFAR-10 python batch"):
        D.load("cifar10", data_dir=root)
    p = tmp_path / "x.idx"
    D.write_idx(p, np.zeros((10, 28, 28), np.uint8))
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(D.DataFormatError, match="truncated"):
        D.read_idx(p)


def test_idx_gzip_bomb_is_refused_from_its_header(tmp_path):
    p = tmp_path / "bomb.idx.gz"
    header = bytes([0, 0, 0x08, 3]) + struct.pack(">III", 60000, 65536, 65536)
    with gzip.open(p, "wb") as f:  # announces 257 GB; holds 50 MB of zeros
        f.write(header)
        f.write(bytes(50 * 2**20))
    t0 = time.perf_counter()
    with pytest.raises(D.DataFormatError, match="over the"):
        D.read_idx(p)
    assert time.perf_counter() - t0 < 1


# ------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def saved(tmp_path):
    import jax.numpy as jnp

    from pcgraph import _checkpoint as ck

    tree = {"w": jnp.arange(1000.0), "b": jnp.ones(3)}
    path = tmp_path / "c.eqx"
    ck.save(path, tree, None, None, {"epoch": 1})
    return ck, path, tree


def test_checkpoint_round_trip_and_tampering(saved):
    ck, path, tree = saved
    net, _, _, meta = ck.load(path, tree)
    assert meta["epoch"] == 1 and np.array_equal(net["w"], tree["w"])
    raw = path.read_bytes()
    cases = {
        "appended": raw + b"\0" * 700,
        "truncated": raw[:-100],
        "flipped bit": raw[:-40] + bytes([raw[-40] ^ 1]) + raw[-39:],
        "flipped metadata": raw.replace(b'"epoch": 1', b'"epoch": 7'),
        "foreign": b"PK\x03\x04 a zip file" + raw,
        "empty": b"",
        "old format": raw.replace(ck.MAGIC, ck.OLD_MAGIC, 1),
        "pickle": pickle.dumps({"w": 1}),
    }
    for what, data in cases.items():
        path.write_bytes(data)
        with pytest.raises(ck.CheckpointError) as info:
            ck.load(path, tree)
        assert str(path) in str(info.value), what
    path.write_bytes(raw)
    ck.load(path, tree)


def test_cli_option_errors_name_the_flag(tmp_path, capsys):
    from pcgraph._cli import main

    mlp = str(MODELS / "digits_mlp.pcg")
    base = ["train", mlp, "--data", "digits", "--out", str(tmp_path / "r"), "--quiet"]
    assert main(base + ["--init-node", "nosuch=mem"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("--init-node: error:") and "'nosuch'" in err
    assert "Traceback" not in err and "<api>" not in err
    assert main(base + ["--init-node", "x=mem"]) == 2
    assert "clamps 'x'" in capsys.readouterr().err
    assert main(base + ["--steps", str(10**12)]) == 2
    assert capsys.readouterr().err.startswith("--steps: error:")
    assert main(base + ["--resume"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "r" / "checkpoint.eqx").exists()


def test_a_killed_run_leaves_the_previous_checkpoint_loadable(tmp_path):
    import signal
    import subprocess
    import sys

    from pcgraph import _checkpoint as ck

    path = tmp_path / "c.eqx"
    script = (
        "import sys, jax.numpy as jnp\n"
        "from pcgraph import _checkpoint as ck\n"
        "i = 0\n"
        "while True:\n"
        "    i += 1\n"
        f"    ck.save({str(path)!r}, {{'w': jnp.full(2_000_000, float(i))}}, None, None, "
        "{'epoch': i})\n"
        "    print(i, flush=True)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        for _ in range(3):  # some checkpoints written, then killed in the middle of another
            assert proc.stdout.readline()
        time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    import jax.numpy as jnp

    net, _, _, meta = ck.load(path, {"w": jnp.zeros(2_000_000)})
    assert meta["epoch"] >= 3 and float(net["w"][0]) == meta["epoch"]


def _benchmark(name: str):
    """A module of benchmarks/ (its generators and measurements are what these tests check)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _chain_model(n: int) -> str:
    return _benchmark("check_speed").chain_model(n)


def test_a_100_kB_model_checks_in_about_a_second():
    text = _chain_model(1620)
    assert 95_000 < len(text) < 100_000
    pcgraph.check(SMALL)  # the parser is built once per process
    t0 = time.process_time()
    assert pcgraph.check(text).ok
    # 0.5 s of CPU on the (heavily shared) development machine; far less on an idle one
    assert time.process_time() - t0 < 2.0


def _check_cost(n: int) -> tuple[bool, int, int]:
    """(ok, Python and builtin function calls, peak traced bytes) of checking a chain of n nodes:
    counts, not timings, so that the comparison below holds on a busy machine too."""
    import sys
    import tracemalloc

    text = _chain_model(n)
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event in ("call", "c_call"):
            calls += 1

    tracemalloc.start()
    sys.setprofile(count)
    try:
        ok = pcgraph.check(text).ok
    finally:
        sys.setprofile(None)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return ok, calls, peak


def test_check_work_and_memory_grow_linearly_with_the_model():
    """4x the nodes: at most 4.4x the function calls and the peak memory (a quadratic pass, a
    per-node sort or search, would show as 16x). The whole front end: parse, lower, validate."""
    pcgraph.check(SMALL)
    ok1, calls1, mem1 = _check_cost(250)
    ok4, calls4, mem4 = _check_cost(1000)
    assert ok1 and ok4
    assert 3.5 * calls1 < calls4 < 4.4 * calls1, (calls1, calls4)
    assert mem4 < 4.4 * mem1, (mem1, mem4)


@pytest.mark.slow
def test_check_is_linear_in_the_model_size():
    """The 11 MB, 180,000-node model (benchmarks/check_speed.py): CPU time per byte as for a 1 MB
    one. Peak RSS measured 1,011 MiB (115 s of CPU on the shared 2-core machine under load 9-10;
    1.1 MB: 10.4 s, 131 MiB, of which parse 7.5, lower 1.6, validate 1.4; records in
    benchmarks/results/check_speed.jsonl); the issue's 1 GB is nearly met, its 10 s is not
    (lark's lexer and LALR loop alone take most of it)."""
    bench = _benchmark("check_speed")
    small, big = bench.measure(18_000), bench.measure(180_000)
    assert small["ok"] and big["ok"]
    assert big["check_s"] < 15 * small["check_s"], (small, big)  # 10x the size; slack for load
    assert big["peak_rss_mb"] < 1200, big


def test_the_step_memory_estimate_covers_the_compiled_step():
    """``step_bytes`` (checked before anything is allocated) against XLA's account of the
    compiled training step, for a parameter-heavy, a residual and a conv model: never below it,
    and at most 2.5 times it (benchmarks/step_memory.py runs larger ones)."""
    bench = _benchmark("step_memory")
    cases = [("mlp_fmnist.pcg", {"width": 1024}, 2), ("resnet_mupc.pcg", {"depth": 4, "width": 32},
                                                      32), ("conv_mnist.pcg", None, 8)]
    for file, params, b in cases:
        r = bench.measure(file, params, b)
        assert 1.0 <= r["ratio"] <= 2.5, r
