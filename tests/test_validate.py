"""Validation rules, each with a failing example: code, position (line:col) and message.

The models are built as IR by hand, with spans taken from a source text next to them (``Src``), so
these tests need no parser. Text-based golden tests through ``pcgraph._load`` are at the end."""

from dataclasses import replace


from pcgraph import (
    EdgeIR, EnergyIR, ModelIR, NodeIR, ParamIR, PriorIR, QueryIR, SettingsIR, Span, TermIR,
    TransformIR,
)
from pcgraph import validate
from pcgraph._validate import errors

FILE = "m.pcg"


class Src:
    """A source text and spans into it."""

    def __init__(self, text: str):
        self.text = text
        self.lines = text.splitlines()

    def at(self, needle: str, nth: int = 0, line_of: str | None = None) -> Span:
        """Span of the ``nth`` occurrence of ``needle`` (optionally on the line holding ``line_of``)."""
        hits = []
        for i, line in enumerate(self.lines, 1):
            if line_of is not None and line_of not in line:
                continue
            j = line.find(needle)
            while j >= 0:
                hits.append(Span(FILE, i, j + 1, i, j + 1 + len(needle)))
                j = line.find(needle, j + 1)
        return hits[nth]

    def stmt(self, needle: str) -> Span:
        """Span of the whole statement on the line holding ``needle`` (indentation excluded)."""
        for i, line in enumerate(self.lines, 1):
            if needle in line:
                start = len(line) - len(line.lstrip())
                return Span(FILE, i, start + 1, i, len(line) + 1)
        raise KeyError(needle)

    @property
    def sources(self):
        return {FILE: self.text}


def dense(src=None, where=None, kind="dense", **args):
    span = src.at(kind, line_of=where) if src else Span(FILE, 0, 0)
    t = TransformIR(kind, args=tuple(sorted(args.items())), span=span)
    return (TermIR((t,), span=span),)


BASE = """\
model m {
  settings { steps = 5 }
  node x: [4]
  node h: [3] act = relu
  node y: [2] energy = categorical
  x -> h : dense
  h -> y : dense
  query train { clamp x, y }
  query test { clamp x; read y }
}
"""


def base(src: Src | None = None, **changes) -> ModelIR:
    s = src or Src(BASE)
    nodes = (
        NodeIR("x", (4,), span=s.stmt("node x")),
        NodeIR("h", (3,), act="relu", span=s.stmt("node h")),
        NodeIR("y", (2,), energy=EnergyIR("categorical"), span=s.stmt("node y")),
    )
    edges = (
        EdgeIR("x", "h", dense(s, "x -> h"), span=s.stmt("x -> h")),
        EdgeIR("h", "y", dense(s, "h -> y"), span=s.stmt("h -> y")),
    )
    queries = (query(s, "train", clamp=("x", "y")), query(s, "test", clamp=("x",), read=("y",)))
    m = ModelIR("m", nodes, edges, (), queries,
                SettingsIR((("steps", 5),), span=s.stmt("settings")), source=FILE,
                span=Span(FILE, 1, 1))
    return m.replace(**changes)


def query(s: Src, name: str, clamp=(), read=(), init=()) -> QueryIR:
    stmt = s.stmt(f"query {name}")
    spans = []
    line = s.lines[stmt.line - 1]
    pos = 0
    for n in (*clamp, *read, *(n for n, _ in init)):
        j = line.index(n, line.index("{", pos) if pos == 0 else pos)
        spans.append((n, Span(FILE, stmt.line, j + 1, stmt.line, j + 1 + len(n))))
        pos = j + len(n)
    return QueryIR(name, tuple(clamp), tuple(read), tuple(init), span=stmt,
                   name_spans=tuple(spans))


def one(diags, code):
    found = [d for d in diags if d.code == code]
    assert len(found) == 1, [d.render() for d in diags]
    return found[0]


def pos(d):
    return (d.span.line, d.span.col)


# ------------------------------------------------------------------------------------ tests
def test_valid_model_has_no_diagnostics():
    assert validate(base(), Src(BASE).sources) == []


def test_undefined_names_with_did_you_mean():
    text = BASE.replace("h -> y : dense", "hh -> y : dense").replace("clamp x;", "clamp xx;")
    s = Src(text)
    m = base(s)
    m = m.replace(
        edges=(m.edges[0], EdgeIR("hh", "y", dense(s, "hh -> y"), span=s.stmt("hh -> y"))),
        queries=(m.queries[0], query(s, "test", clamp=("xx",), read=("y",))),
    )
    ds = validate(m, s.sources)
    und = [d for d in ds if d.code == "undefined-name"]
    assert [pos(d) for d in und] == [(7, 3), (9, 22)]
    assert und[0].message == "edge hh -> y names undefined node 'hh'"
    assert und[0].hint == "did you mean 'h'?"
    assert und[1].message == "query 'test' names undefined node 'xx'"
    assert und[1].hint == "did you mean 'x'?"
    # no crash, and h (now without children) is still checked
    assert "7:3" in und[0].render(s.sources).splitlines()[0]


def test_duplicate_node_points_at_second_and_mentions_first():
    text = BASE.replace("  x -> h", "  node h: [3]\n  x -> h")
    s = Src(text)
    m = base(s)
    m = m.replace(nodes=m.nodes + (NodeIR("h", (3,), span=Span(FILE, 6, 3, 6, 15)),))
    d = one(validate(m, s.sources), "duplicate-node")
    assert pos(d) == (6, 8)
    assert d.message == "node 'h' is declared twice (first at line 4)"


def test_duplicate_edge_hint_combines_terms():
    text = BASE.replace("  query train", "  x -> h : identity\n  query train")
    s = Src(text)
    m = base(s)
    m = m.replace(edges=m.edges + (EdgeIR("x", "h", dense(s, "x -> h : identity", "identity"),
                                          span=s.stmt("x -> h : identity")),))
    ds = validate(m, s.sources)
    d = one(ds, "duplicate-edge")
    assert pos(d) == (8, 3)
    assert d.message == "edge x -> h is declared twice (first at line 6)"
    assert "+" in d.hint
    # the identity term's shape mismatch [4] -> [3] is reported too, at the transform
    sm = one(ds, "shape-mismatch")
    assert pos(sm) == (8, 12) and "identity edge needs equal shapes" in sm.hint


def test_duplicate_query():
    m = base()
    s = Src(BASE.replace("query test", "query train"))
    q2 = replace(m.queries[1], name="train")
    d = one(validate(m.replace(queries=(m.queries[0], q2)), s.sources), "duplicate-query")
    assert pos(d) == (9, 9) and d.message == "query 'train' is declared twice (first at line 8)"


def test_self_loop():
    s = Src(BASE.replace("  query train", "  h -> h : dense\n  query train"))
    m = base(s)
    m = m.replace(edges=m.edges + (EdgeIR("h", "h", dense(s, "h -> h"), span=s.stmt("h -> h")),))
    d = one(validate(m, s.sources), "self-loop")
    assert pos(d) == (8, 3) and d.message == "edge h -> h connects node 'h' to itself"


def test_shape_mismatch_points_at_culprit_transform():
    text = BASE.replace("x -> h : dense", "x -> h : flatten |> dense(out=5)")
    s = Src(text)
    chain = (TransformIR("flatten", span=s.at("flatten")),
             TransformIR("dense", args=(("out", 5),), span=s.at("dense(out=5)")))
    m = base(s)
    m = m.replace(edges=(EdgeIR("x", "h", (TermIR(chain, span=s.at("flatten")),),
                                span=s.stmt("x -> h")), m.edges[1]))
    d = one(validate(m, s.sources), "shape-mismatch")
    assert pos(d) == (6, 23)
    assert d.message == ("edge x -> h (from [4] to [3]): edge produces shape [5] but the target node "
                         "has shape [3]")
    assert d.hint


def test_image_into_dense_hints_flatten():
    s = Src(BASE.replace("node x: [4]", "node x: [1,4,4]"))
    m = base(s)
    m = m.replace(nodes=(replace(m.nodes[0], shape=(1, 4, 4)),) + m.nodes[1:])
    d = one(validate(m, s.sources), "shape-mismatch")
    assert pos(d) == (6, 12) and "flatten" in d.hint


def test_unknown_names_of_every_kind():
    text = """\
model m {
  settings { steps = 5; parameterisation = mup; stepz = 3; activity_lr = "fast" }
  node x: [4] init = forwrd
  node h: [3] act = rleu
  node y: [2] energy = categorial prior = laplace(0, 1)
  x -> h : dens
  h -> y : dense(pre = tnh, outt = 2)
  query train { clamp x, y }
}
"""
    s = Src(text)
    nodes = (
        NodeIR("x", (4,), init="forwrd", span=s.stmt("node x")),
        NodeIR("h", (3,), act="rleu", span=s.stmt("node h")),
        NodeIR("y", (2,), energy=EnergyIR("categorial"), prior=PriorIR("laplace"),
               span=s.stmt("node y")),
    )
    e1 = EdgeIR("x", "h", dense(s, "x -> h", "dens"), span=s.stmt("x -> h"))
    term_span = s.at("dense(pre = tnh, outt = 2)")
    t2 = TransformIR("dense", args=(("outt", 2),), span=term_span)
    e2 = EdgeIR("h", "y", (TermIR((t2,), pre="tnh", span=term_span),),
                span=s.stmt("h -> y"))
    settings = SettingsIR((("steps", 5), ("parameterisation", "mup"), ("stepz", 3),
                           ("activity_lr", "fast")), span=s.stmt("settings"))
    m = ModelIR("m", nodes, (e1, e2), (), (query(s, "train", ("x", "y")),), settings)
    ds = validate(m, s.sources)
    got = {d.code: (pos(d), d.message, d.hint) for d in reversed(ds)}  # first of each code
    assert got["unknown-parameterisation"] == (
        (2, 44), "setting parameterisation: 'mup' is unknown", "did you mean 'mupc'?")
    assert got["unknown-setting"][:2] == ((2, 49), "unknown setting 'stepz'")
    assert got["unknown-setting"][2] == "did you mean 'steps'?"
    assert got["setting-type"][:2] == ((2, 60), "setting 'activity_lr' must be a number, got 'fast'")
    assert got["unknown-init"] == ((3, 22), "node 'x': init method 'forwrd' is unknown",
                                   "did you mean 'forward'?")
    assert got["unknown-activation"][0] == (4, 21)
    assert got["unknown-energy"][0] == (5, 24)
    assert got["unknown-prior"][:2] == ((5, 43), "node 'y': prior 'laplace' is unknown")
    assert got["unknown-transform"] == ((6, 12), "edge x -> h: unknown transform 'dens'",
                                        "did you mean 'dense'?")
    assert got["unknown-argument"] == ((7, 29), "edge h -> y: dense has no argument 'outt'",
                                       "did you mean 'out'?")
    pre = [d for d in ds if d.code == "unknown-activation" and "pre-activation" in d.message]
    assert pos(pre[0]) == (7, 24) and pre[0].hint == "did you mean 'tanh'?"
    # all at once, sorted by position
    assert [pos(d) for d in ds] == sorted(pos(d) for d in ds)


def test_setting_types_and_ranges():
    s = Src(BASE)
    m = base(s, settings=SettingsIR((("steps", 2.5), ("seed", True), ("weight_lr", -1),
                                     ("solver", "rk4")), span=s.stmt("settings")))
    ds = validate(m, s.sources)
    msgs = [d.message for d in ds]
    assert "setting 'steps' must be a int, got 2.5" in msgs
    assert "setting 'seed' must be a int, got True" in msgs
    assert "setting 'weight_lr' must be >= 0, got -1" in msgs
    assert "setting solver: 'rk4' is unknown" in msgs


def test_categorical_node_with_children():
    text = BASE.replace("node h: [3] act = relu", "node h: [3] energy = categorical")
    s = Src(text)
    m = base(s)
    m = m.replace(nodes=(m.nodes[0], replace(m.nodes[1], energy=EnergyIR("categorical"),
                                             span=s.stmt("node h")), m.nodes[2]))
    d = one(validate(m, s.sources), "categorical-not-leaf")
    assert pos(d) == (4, 24)
    assert d.message == "node 'h' has categorical energy but predicts other nodes (y)"
    assert "gaussian" in d.hint


def test_prior_on_node_with_parents_is_an_error():
    text = BASE.replace("node h: [3] act = relu", "node h: [3] prior = gaussian(0, 1)")
    s = Src(text)
    m = base(s)
    m = m.replace(nodes=(m.nodes[0], NodeIR("h", (3,), prior=PriorIR(), span=s.stmt("node h")),
                         m.nodes[2]))
    d = one(validate(m, s.sources), "prior-with-parents")
    assert d.severity == "error" and pos(d) == (4, 15) and "(x)" in d.message


def test_isolated_node():
    s = Src(BASE.replace("  x -> h", "  node lone: [4]\n  x -> h"))
    m = base(s)
    m = m.replace(nodes=m.nodes + (NodeIR("lone", (4,), span=s.stmt("node lone")),))
    d = one(validate(m, s.sources), "isolated-node")
    assert pos(d) == (6, 8) and d.message.startswith("node 'lone' has no energy edges")


def test_query_clamped_and_read_and_clamps_nothing():
    text = BASE.replace("query test { clamp x; read y }", "query test { clamp x, y; read y }")
    text = text.replace("}\n}", "}\n  query empty { read y }\n}")
    s = Src(text)
    m = base(s)
    m = m.replace(queries=(m.queries[0], query(s, "test", clamp=("x", "y"), read=("y",)),
                           query(s, "empty", read=("y",))))
    ds = validate(m, s.sources)
    d = one(ds, "clamped-and-read")
    assert pos(d) == (9, 33) and d.message == "query 'test' both clamps and reads node 'y'"
    d = one(ds, "clamps-nothing")
    assert pos(d) == (10, 9) and d.message == "query 'empty' clamps no node"


def test_free_nodes_unreachable_from_clamped_nodes_are_named():
    text = BASE.replace("  query train", "  a -> b : dense\n  query train")
    s = Src(text)
    m = base(s)
    m = m.replace(nodes=m.nodes + (NodeIR("a", (4,)), NodeIR("b", (4,))),
                  edges=m.edges + (EdgeIR("a", "b", dense(), span=s.stmt("a -> b")),))
    ds = errors(validate(m, s.sources))
    assert [d.code for d in ds] == ["unconstrained-nodes", "unconstrained-nodes"]
    assert pos(ds[0]) == (9, 9)
    assert ds[0].message == ("query 'train': free nodes a, b are not connected to any clamped "
                             "node, so their energy is unconstrained")


def test_unused_parameter_is_a_warning():
    s = Src(BASE.replace("  settings", "  param width = 3, depth = 2\n  settings"))
    m = base(s, params=(ParamIR("width", 3, True, s.at("width")),
                        ParamIR("depth", 2, False, s.at("depth"))))
    ds = validate(m, s.sources)
    assert [(d.severity, d.code, pos(d)) for d in ds] == [("warning", "unused-param", (2, 20))]
    assert ds[0].message == "parameter 'depth' is never used"


LOOP = """\
model loop {
  settings { init = forward }
  node img: [4]
  node a: [3]
  node b: [3] init = forward
  node label: [2]
  img -> a : dense
  a -> b : dense
  b -> label : dense
  b -> a : dense
  query train { clamp img, label }
  query test { clamp img; read label; init a = forward }
}
"""


def loop_model(settings=True, node_init=True, query_init=True):
    s = Src(LOOP)
    nodes = (NodeIR("img", (4,), span=s.stmt("node img")), NodeIR("a", (3,), span=s.stmt("node a")),
             NodeIR("b", (3,), init="forward" if node_init else None, span=s.stmt("node b")),
             NodeIR("label", (2,), span=s.stmt("node label")))
    edges = tuple(EdgeIR(u, v, (TermIR((TransformIR("dense"),)),), span=s.stmt(f"{u} -> {v}"))
                  for u, v in [("img", "a"), ("a", "b"), ("b", "label"), ("b", "a")])
    qs = (query(s, "train", ("img", "label")),
          query(s, "test", ("img",), ("label",), (("a", "forward"),) if query_init else ()))
    st = SettingsIR((("init", "forward"),) if settings else (), span=s.stmt("settings"))
    return ModelIR("loop", nodes, edges, (), qs, st), s


def test_forward_impossible_from_model_setting_names_the_cycle():
    m, s = loop_model(node_init=False, query_init=False)
    ds = validate(m, s.sources)
    assert [d.code for d in ds] == ["forward-infeasible", "forward-infeasible"]
    assert pos(ds[0]) == (2, 21)
    assert ds[0].message == ("init = forward (model setting) is impossible in query 'train': graph "
                             "has a cycle a -> b -> a (free nodes that cannot be forward-initialised:"
                             " a, b)")
    assert "mem" in ds[0].hint and "Prop. 3.2" in ds[0].hint


def test_forward_impossible_per_node_and_per_query():
    m, s = loop_model(settings=False)
    ds = validate(m, s.sources)
    assert [(d.code, pos(d)) for d in ds] == [("forward-infeasible", (5, 22)),
                                             ("forward-infeasible", (12, 44))]
    assert ds[0].message == ("init = forward is impossible for node 'b' in queries 'train', "
                             "'test': b is on the cycle a -> b -> a")
    assert ds[1].message == ("init = forward is impossible for node 'a' in query 'test': a is on "
                             "the cycle a -> b -> a")


def test_forward_impossible_generative_names_unclamped_root():
    text = """\
model gen {
  node z: [2] init = forward
  node img: [4]
  z -> img : dense
  query train { clamp img }
}
"""
    s = Src(text)
    m = ModelIR("gen", (NodeIR("z", (2,), init="forward", span=s.stmt("node z")),
                        NodeIR("img", (4,), span=s.stmt("node img"))),
                (EdgeIR("z", "img", dense(), span=s.stmt("z -> img")),), (),
                (query(s, "train", ("img",)),))
    d = one(validate(m, s.sources), "forward-infeasible")
    assert pos(d) == (2, 22) and "z has no parents and is not clamped" in d.message


def test_amortised_edges_checked_too():
    text = BASE.replace("  query train", "  y ~> x : dense\n  x ~> ghost : dense\n  query train")
    s = Src(text)
    m = base(s)
    m = m.replace(amortised=(
        EdgeIR("y", "x", dense(s, "y ~> x"), amortised=True, span=s.stmt("y ~> x")),
        EdgeIR("x", "ghost", dense(s, "x ~> ghost"), amortised=True, span=s.stmt("x ~> ghost"))))
    ds = validate(m, s.sources)
    d = one(ds, "amortised-never-used")
    assert pos(d) == (8, 3) and "every query clamps" in d.message
    d = one(ds, "undefined-name")
    assert pos(d) == (9, 8) and d.message == "amortised edge x ~> ghost names undefined node 'ghost'"


def test_never_raises_on_garbage():
    m = ModelIR(
        "junk",
        (NodeIR("a", ()), NodeIR("a", (0, -1)), NodeIR("b", (2,), act="???")),
        (EdgeIR("a", "nope", ()), EdgeIR("b", "b", (TermIR(()),)), EdgeIR("zz", "yy", ()),
         EdgeIR("a", "b", (TermIR((TransformIR("conv", posargs=("x", 1, 2, 3, 4)),)),))),
        (EdgeIR("q", "q", (), amortised=True),),
        (QueryIR("q"), QueryIR("q", clamp=("a", "a"), read=("a",), init=(("b", "bogus"),))),
        SettingsIR((("init", 3), ("mystery", None))),
        (ParamIR("p", 1, False),),
    )
    ds = validate(m)
    assert errors(ds)
    assert all(d.render() for d in ds)


# ----------------------------------------------------------------- through the parser (golden)
def _parse():
    from pcgraph import parse_model

    return parse_model


GOLDEN_BAD = """\
model bad {
  settings { init = forward; stepz = 3 }
  node x: [4]
  node h, g: [8]  act = rleu
  node y: [2]     energy = categorical
  x -> h : dense
  h -> y : dense
  y -> g : dense
  g -> h : dense
  x -> hh : dense
  query train { clamp x }
}
"""


def test_golden_text_all_problems_at_once():
    parse_model = _parse()
    model = parse_model(GOLDEN_BAD, file="bad.pcg")
    ds = validate(model, {"bad.pcg": GOLDEN_BAD})
    got = [(d.code, d.span.line) for d in ds]
    for expected in [("unknown-setting", 2), ("forward-infeasible", 2),
                     ("unknown-activation", 4), ("categorical-not-leaf", 5),
                     ("undefined-name", 10)]:
        assert expected in got, "\n".join(d.render({"bad.pcg": GOLDEN_BAD}) for d in ds)
    und = one(ds, "undefined-name")
    assert (und.span.line, und.span.col) == (10, 8) and und.hint == "did you mean 'h'?"
    assert [d.span.line for d in ds] == sorted(d.span.line for d in ds)


def test_golden_text_valid_models():
    parse_model = _parse()
    text = """\
model hybrid {
  node img: [16]
  node h: [8]  act = tanh
  node z: [4]  prior = gaussian(0, 1)
  z -> h -> img : dense
  img ~> z : dense(pre = tanh)
  query train { clamp img }
  query infer { clamp img; read z }
}
"""
    assert validate(parse_model(text, file="h.pcg"), {"h.pcg": text}) == []


def test_group_declaration_reports_a_bad_activation_once_and_repeated_name_at_second():
    text = BASE.replace("node h: [3] act = relu", "node h, h: [3] act = rleu")
    s = Src(text)
    m = base(s)
    span = s.stmt("node h")
    m = m.replace(nodes=(m.nodes[0], NodeIR("h", (3,), act="rleu", span=span),
                         NodeIR("h", (3,), act="rleu", span=span), m.nodes[2]))
    ds = validate(m, s.sources)
    assert pos(one(ds, "unknown-activation")) == (4, 24)
    d = one(ds, "duplicate-node")
    assert pos(d) == (4, 11) and d.message == "node 'h' is declared twice (first at line 4)"


def test_amortised_source_never_clamped_warns_unless_chained():
    text = BASE.replace("  query train", "  h ~> y : dense\n  query train")
    s = Src(text)
    m = base(s, amortised=(EdgeIR("h", "y", dense(), amortised=True, span=s.stmt("h ~> y")),))
    d = one(validate(m, s.sources), "amortised-unclamped-source")
    assert d.severity == "warning" and pos(d) == (8, 3)
    chained = m.replace(amortised=m.amortised + (EdgeIR("x", "h", dense(), amortised=True),))
    assert [d.code for d in validate(chained, s.sources)] == []


GOLDEN_MANY = """\
model bad {
  param width = 8, unused = 3
  settings { init = forward; stepz = 3; parameterisation = mup; steps = 2.5 }
  node x: [4]
  node h, g: [width]  act = rleu
  node y: [3]     energy = categorical
  node h: [8]
  node z: [2] prior = gaussian(0, 1) init = forward
  x -> h : dense
  x -> h : identity
  h -> y : dense
  y -> g : dense
  g -> h : dense
  z -> z : dense
  x -> hh : flatten |> dens
  x ~> y : dense(outt = 3)
  query train { clamp x, y; read y; init g = forward }
  query train { read y }
}
"""


def test_golden_text_positions():
    parse_model = _parse()
    ds = validate(parse_model(GOLDEN_MANY, file="many.pcg"), {"many.pcg": GOLDEN_MANY})
    assert [(d.code, d.span.line, d.span.col) for d in ds] == [
        ("unused-param", 2, 20),
        ("forward-infeasible", 3, 21),  # the second `train` clamps nothing: no root is clamped
        ("unknown-setting", 3, 30),
        ("unknown-parameterisation", 3, 60),
        ("setting-type", 3, 65),
        ("unknown-activation", 5, 29),  # once for `h, g`
        ("categorical-not-leaf", 6, 28),
        ("duplicate-node", 7, 8),
        ("prior-with-parents", 8, 15),
        ("forward-infeasible", 8, 45),
        ("duplicate-edge", 10, 3),
        ("shape-mismatch", 10, 12),
        ("self-loop", 14, 3),
        ("undefined-name", 15, 8),
        ("unknown-transform", 15, 24),
        ("unknown-argument", 16, 18),
        ("clamped-and-read", 17, 34),
        ("duplicate-query", 18, 9),
        ("clamps-nothing", 18, 9),
    ]
    assert ds[8].message == ("node 'z' declares a prior but has parents (z); priors apply only "
                             "to parentless nodes and would be ignored")
    assert ds[9].message == ("init = forward is impossible for node 'z' in query 'train': z is on "
                             "the cycle z -> z")


GOLDEN_QUERIES = """\
model q {
  node img: [16]
  node h: [8]
  node z: [4]
  node a, b: [4]
  node lone: [2]
  z -> h -> img : dense
  a -> b : dense
  img ~> z : dense
  query train { clamp img; init h = forward }
}
"""


def test_golden_text_query_rules():
    parse_model = _parse()
    ds = validate(parse_model(GOLDEN_QUERIES, file="q.pcg"), {"q.pcg": GOLDEN_QUERIES})
    got = [(d.code, d.span.line, d.span.col, d.message) for d in ds]
    assert got == [
        ("isolated-node", 6, 8, "node 'lone' has no energy edges: nothing predicts it and it "
                                "predicts nothing"),
        ("unconstrained-nodes", 10, 9, "query 'train': free nodes a, b are not connected to any "
                                       "clamped node, so their energy is unconstrained"),
        ("forward-infeasible", 10, 33, "init = forward is impossible for node 'h' in query "
                                       "'train': h depends on unclamped root(s) z"),
    ]


def test_query_init_rules():
    text = BASE.replace("query test { clamp x; read y }",
                        "query test { clamp x, x; read y; init x = zero, h = mem, h = zro }")
    s = Src(text)
    m = base(s)
    q = query(s, "test", clamp=("x", "x"), read=("y",),
              init=(("x", "zero"), ("h", "mem"), ("h", "zro")))
    ds = validate(m.replace(queries=(m.queries[0], q)), s.sources)
    got = [(d.severity, d.code, pos(d)) for d in ds]
    assert got == [
        ("warning", "repeated-name", (9, 25)),
        ("error", "init-of-clamped", (9, 41)),
        ("error", "duplicate-init", (9, 60)),
        ("error", "unknown-init", (9, 64)),
    ]
    assert ds[3].message == "query 'test': init method 'zro' (for node 'h') is unknown"
    assert ds[3].hint == "did you mean 'zero'?"
