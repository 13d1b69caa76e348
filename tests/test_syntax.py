"""The .pcg syntax: every malformed input gives a PcgError with an exact position and a message
that says how to fix it (never a lark or Python traceback)."""

import logging

import pytest
from lark import Lark, logger

from pcgraph import PcgError, load, parse_model
from pcgraph._syntax import grammar_path, parse

# (name, text, first line of the rendered error), parsed as file "t.pcg"
GOLDEN = [
    ('edge_missing_colon',
     'model m {\n  node a, b: [3]\n  a -> b\n  query q { clamp a }\n}\n',
     "t.pcg:3:9: error: expected ':' and the edge's transform after 'b' (an edge is `a -> b : dense`)"),
    ('node_missing_colon',
     'model m {\n  node h1, h2 [3]\n}\n',
     "t.pcg:2:15: error: expected ',' or ':' after the node names, found '['"),
    ('unknown_node_option',
     'model m {\n  node x: [3] actv = relu\n}\n',
     "t.pcg:2:20: error: unexpected '=' after 'actv': 'actv' is not an option here"),
    ('unterminated_block',
     'model m {\n  for i in 1..3 {\n    node h{i}: [4]\n\n  node y: [3]\n}\n',
     "t.pcg:2:17: error: the file ends before this '{' is closed"),
    ('missing_brace_at_eof',
     'model m {\n  node x: [3]\n  x -> x : dense\n',
     "t.pcg:1:9: error: the file ends before this '{' is closed"),
    ('bad_token',
     'model m {\n  node x: [3] $\n}\n',
     "t.pcg:2:15: error: unexpected character '$'"),
    ('bad_interpolation',
     'model m {\n  node h{i-}: [3]\n}\n',
     't.pcg:2:12: error: incomplete expression inside {...} in a name'),
    ('missing_transform',
     'model m {\n  node x, y: [3]\n  x -> y :\n}\n',
     "t.pcg:3:11: error: expected a transform (dense, conv, identity, maxpool, avgpool, flatten) after ':', found '}'"),
    ('shape_without_brackets',
     'model m {\n  node x: 3\n}\n',
     "t.pcg:2:11: error: expected a shape like [784] or [3,32,32] after ':', found number 3"),
    ('unterminated_string',
     'include "lib.pcg\nmodel m { }\n',
     't.pcg:1:9: error: unterminated string: add the closing \'"\' on this line'),
    ('statement_outside_model',
     'node x: [3]\nmodel m { }\n',
     "t.pcg:1:1: error: expected `model NAME { ... }`, block, param or include, found 'node'"),
    ('missing_comma_in_shape',
     'model m {\n  node x: [3 4]\n}\n',
     "t.pcg:2:14: error: expected ',', ']' or an operator after '3', found number 4"),
    ('setting_outside_settings',
     'model m {\n  steps = 3\n}\n',
     "t.pcg:2:9: error: unexpected '=' after 'steps': 'steps' is not an option here"),
    ('unknown_parameter',
     'model m {\n  param width = 64\n  node h: [widht]\n}\n',
     "t.pcg:3:12: error: unknown parameter 'widht'"),
    ('division_by_zero',
     'model m {\n  param n = 4\n  node h: [n // (n - 4)]\n}\n',
     "t.pcg:3:12: error: division by zero in '//'"),
    ('range_bad_bound',
     'model m {\n  for i in 1..2.5 { node h{i}: [4] }\n}\n',
     't.pcg:2:15: error: loop bounds are integers; this one is 2.5'),
    ('range_backwards',
     'model m {\n  for i in 5..1 { node h{i}: [4] }\n}\n',
     't.pcg:2:12: error: range 5..1 runs backwards'),
    ('block_arg_count',
     'model m {\n  block layer(src, dst, n) { node dst: [n]; src -> dst : dense }\n  node x: [4]\n  use layer(x, h1)\n}\n',
     "t.pcg:4:3: error: block 'layer' takes 3 arguments, got 2; missing n"),
    ('unknown_block',
     'model m {\n  block layer(src, dst) { src -> dst : dense }\n  use layr(x, y)\n}\n',
     "t.pcg:3:7: error: unknown block 'layr'"),
    ('non_integer_shape',
     'model m {\n  param width = 10\n  node h: [width / 4]\n}\n',
     't.pcg:3:12: error: a shape holds positive integers; this is 2.5'),
    ('invalid_interpolated_name',
     'model m {\n  for i in 0..1 { node h{i-1}: [4] }\n}\n',
     "t.pcg:2:24: error: 'h-1' is not a valid name"),
    ('duplicate_setting',
     'model m {\n  settings { steps = 3; steps = 4 }\n}\n',
     "t.pcg:2:25: error: setting 'steps' is set twice (first at t.pcg:2:14)"),
    ('no_model',
     'param width = 3\n',
     't.pcg:1:1: error: no model in this file: write `model NAME { ... }`'),
    ('positional_after_keyword',
     'model m {\n  node a, b: [1, 8, 8]\n  a -> b : conv(kernel = 3, 1)\n}\n',
     't.pcg:3:29: error: a positional argument cannot follow keyword arguments'),
    ('recursive_block',
     'model m {\n  block loop(a) { use loop(a) }\n  use loop(x)\n}\n',
     "t.pcg:2:19: error: block 'loop' uses itself"),
    ('call_in_setting',
     'model m {\n  settings { init = mem(3) }\n}\n',
     "t.pcg:2:21: error: setting 'init' takes a number or a name, not a call"),
    ('name_param_as_number',
     'model m {\n  block layer(src, n) { node src: [n] }\n  use layer(h1, h2)\n}\n',
     "t.pcg:2:36: error: 'n' is the name 'h2' here, not a number"),
    ('empty_interpolation',
     'model m {\n  node h{}: [3]\n}\n',
     't.pcg:2:9: error: empty {} in a name'),
]


@pytest.mark.parametrize("name,text,expected", GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_errors(name, text, expected):
    with pytest.raises(PcgError) as info:
        parse_model(text, "t.pcg")
    err = info.value
    assert type(err) is PcgError
    rendered = err.render()
    assert rendered.split("\n")[0] == expected
    assert "Traceback" not in rendered and "lark" not in rendered.lower()
    # the source line and a caret under the reported column
    d = err.diagnostics[0]
    lines = rendered.split("\n")
    src = text.splitlines()[d.span.line - 1]
    assert lines[1] == "    " + src
    assert lines[2].index("^") == 4 + d.span.col - 1


def _write(root, files):
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def _first_error(path):
    with pytest.raises(PcgError) as info:
        load(path, validate=False)
    return info.value.render().split("\n")[0], info.value


def test_include_escaping_directory(tmp_path, monkeypatch):
    _write(tmp_path, {
        "secret.pcg": "param k = 1\n",
        "models/main.pcg": 'include "../secret.pcg"\nmodel m { node x: [k] }\n',
    })
    monkeypatch.chdir(tmp_path)
    first, err = _first_error("models/main.pcg")
    assert first == ("models/main.pcg:1:9: error: include '../secret.pcg' leaves the directory of "
                     "models/main.pcg")
    assert "^~~~" in err.render()


def test_include_cycle(tmp_path, monkeypatch):
    _write(tmp_path, {
        "main.pcg": 'include "lib/a.pcg"\nmodel m { use blk(x) }\n',
        "lib/a.pcg": 'include "b.pcg"\nblock blk(n) { node n: [3] }\n',
        "lib/b.pcg": 'include "a.pcg"\n',
    })
    monkeypatch.chdir(tmp_path)
    first, err = _first_error("main.pcg")
    assert first == "lib/b.pcg:1:9: error: include cycle: a.pcg -> b.pcg -> a.pcg"
    assert '    include "a.pcg"' in err.render()


def test_include_missing_file(tmp_path, monkeypatch):
    _write(tmp_path, {"main.pcg": 'include "nope.pcg"\nmodel m { }\n'})
    monkeypatch.chdir(tmp_path)
    first, _ = _first_error("main.pcg")
    assert first == "main.pcg:1:9: error: cannot include 'nope.pcg': no such file"


def test_syntax_error_in_included_file_points_into_it(tmp_path, monkeypatch):
    _write(tmp_path, {"main.pcg": 'include "lib.pcg"\nmodel m { }\n',
                      "lib.pcg": "block b(x) {\n  x -> y\n}\n"})
    monkeypatch.chdir(tmp_path)
    first, err = _first_error("main.pcg")
    assert first.startswith("lib.pcg:2:9: error: expected ':' and the edge's transform")
    assert "lib.pcg" in err.sources


def test_all_lowering_errors_at_once():
    text = ("model m {\n"
            "  node a: [wdth]\n"
            "  node b: [1 / 0]\n"
            "  use nothing(a)\n"
            "}\n")
    with pytest.raises(PcgError) as info:
        parse_model(text, "t.pcg")
    got = [(d.span.line, d.span.col, d.code) for d in info.value.diagnostics]
    assert got == [(2, 12, "unknown-parameter"), (3, 12, "division-by-zero"),
                   (4, 7, "unknown-block")]


def test_errors_in_loop_bodies_are_reported_once():
    text = "model m {\n  for i in 1..50 { node h{i}: [q] }\n}\n"
    with pytest.raises(PcgError) as info:
        parse_model(text, "t.pcg")
    assert len(info.value.diagnostics) == 1


def test_no_code_execution():
    with pytest.raises(PcgError):
        parse_model('model m { param x = __import__("os").getcwd() }', "t.pcg")


def test_grammar_is_conflict_free(caplog):
    """LALR conflicts are silently resolved as shift by lark; there must be none."""
    logger.setLevel(logging.DEBUG)
    try:
        with caplog.at_level(logging.DEBUG, logger="lark"):
            Lark(open(grammar_path()).read(), parser="lalr", start=["start", "expr"])
    finally:
        logger.setLevel(logging.WARNING)
    assert not [r for r in caplog.records if "conflict" in r.getMessage().lower()]


def test_statements_need_no_separators_and_accept_semicolons():
    a = parse_model("model m { node x: [2] node y: [2] act = relu x -> y : dense "
                    "query q { clamp x read y } }")
    b = parse_model("model m {\n node x: [2];\n node y: [2] act = relu;\n x -> y : dense;\n"
                    " query q { clamp x; read y; };\n}\n")
    assert a == b


def test_comments_and_keywords_as_setting_keys():
    m = parse_model("# header\nmodel m {  # trailing\n"
                    "  settings { init = mem, steps = 2 }  # init is a keyword elsewhere\n"
                    "  node x: [2] init = mem # per node\n}\n")
    assert m.settings.get("init") == "mem" and m.node("x").init == "mem"


def test_parse_returns_tree_with_positions():
    tree = parse("model m {\n  node h{1 + 1}: [3]\n}\n", "t.pcg")
    iname = next(tree.find_data("iname"))
    assert (iname.meta.line, iname.meta.column) == (2, 8)
    expr = iname.children[1]
    assert (expr.meta.line, expr.meta.column) == (2, 10)
