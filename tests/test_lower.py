"""Lowering: parameters, loops, interpolation, blocks, includes, groups, chains, terms → IR."""

import itertools

import pytest

from pcgraph import to_graph, EnergyIR, PriorIR, Span, TermIR, TransformIR, load, parse_model


def edges(m, amortised=False):
    return [(e.src, e.dst) for e in (m.amortised if amortised else m.edges)]


def test_params_arithmetic_ints_stay_ints():
    m = parse_model(
        "model m {\n"
        "  param w = 512, depth = 128, half = w / 2, third = w / 3, q = w // 3, r = w % 5,\n"
        "        neg = -(depth - 1) * 2, f = 0.5 * 4\n"
        "  node x: [half]\n"
        "}\n"
    )
    vals = {p.name: p.value for p in m.params}
    assert vals == {"w": 512, "depth": 128, "half": 256, "third": 512 / 3, "q": 170, "r": 2,
                    "neg": -254, "f": 2.0}
    assert type(vals["half"]) is int and type(vals["q"]) is int and type(vals["f"]) is float
    assert m.node("x").shape == (256,)


def test_param_used_flags():
    m = parse_model("param top = 1, idle = 2\nmodel m {\n  param w = 4, unused = 3\n"
                    "  settings { steps = top }\n  node x: [w]\n}\n")
    assert {p.name: p.used for p in m.params} == {"top": True, "idle": False, "w": True,
                                                  "unused": False}
    assert m.params[0].span == Span("<string>", 1, 7, 1, 14)


def test_settings_values():
    m = parse_model("model m {\n  param depth = 16\n  settings { parameterisation = mupc; "
                    "steps = depth; activity_lr = 0.5; init = auto; weight_decay = 1e-4 }\n}\n")
    assert m.settings.values == (("activity_lr", 0.5), ("init", "auto"),
                                 ("parameterisation", "mupc"), ("steps", 16),
                                 ("weight_decay", 1e-4))
    assert m.settings.get("solver") == "gd"  # defaults come from DEFAULT_SETTINGS


def test_node_options():
    m = parse_model(
        "model m {\n"
        "  node a, b: [3, 4, 4] act = gelu init = mem\n"
        "  node y: [10] energy = categorical\n"
        "  node p: [2] energy = gaussian(precision = 2) prior = gaussian(0, 0.5)\n"
        "  node q: [2] energy = gaussian(4.0) prior = gaussian(std = 3, mean = 1)\n"
        "}\n"
    )
    a = m.node("a")
    assert (a.shape, a.act, a.init, a.energy, a.prior) == ((3, 4, 4), "gelu", "mem",
                                                          EnergyIR(), None)
    assert m.node("y").energy == EnergyIR("categorical", 1.0)
    assert m.node("p").energy == EnergyIR("gaussian", 2.0)
    assert m.node("p").prior == PriorIR("gaussian", 0.0, 0.5)
    assert m.node("q").energy.precision == 4.0 and m.node("q").prior == PriorIR("gaussian", 1, 3)
    assert a.span == Span("<string>", 2, 8, 2, 9) and m.node("b").span.col == 11


def test_chain_and_groups():
    m = parse_model("model m {\n  x -> h1 -> h2 -> y : dense\n  {a, b} -> {c, d} : identity\n"
                    "  x -> {a, b} -> y : dense\n}\n")
    assert edges(m) == [("x", "h1"), ("h1", "h2"), ("h2", "y"),
                        ("a", "c"), ("a", "d"), ("b", "c"), ("b", "d"),
                        ("x", "a"), ("x", "b"), ("a", "y"), ("b", "y")]
    assert len({e.terms for e in m.edges[:3]}) == 1  # one set of terms for the whole chain
    assert m.edges[0].span == Span("<string>", 2, 3, 2, 10)


def test_terms_and_transforms():
    m = parse_model(
        "model m {\n"
        "  a -> b : dense(pre = relu, bias = false) + identity\n"
        "  c -> d : maxpool(2) |> flatten |> dense(out = 8, init = normal, pre = tanh)\n"
        "  e -> f : conv(kernel = 3, stride = 1, padding = same) + avgpool(window = 2)\n"
        "}\n"
    )
    t1, t2 = m.edges[0].terms
    assert t1 == TermIR((TransformIR("dense"),), pre="relu", bias=False)
    assert t2 == TermIR((TransformIR("identity"),))
    (t,) = m.edges[1].terms
    assert [tr.kind for tr in t.chain] == ["maxpool", "flatten", "dense"]
    assert t.chain[0].posargs == (2,) and t.chain[2].args == (("out", 8),)
    assert (t.pre, t.weight_init, t.bias) == ("tanh", "normal", True)
    conv = m.edges[2].terms[0].chain[0]
    assert conv.args == (("kernel", 3), ("padding", "same"), ("stride", 1))  # sorted by name
    assert conv.span == Span("<string>", 4, 12, 4, 12 + len("conv(kernel = 3, stride = 1, padding = same)"))
    assert m.edges[2].terms[1].chain[0].kwargs == {"window": 2}


def test_amortised_edges():
    m = parse_model("model m {\n  z -> h -> img : dense\n  img ~> z : dense(pre = tanh)\n}\n")
    assert edges(m) == [("z", "h"), ("h", "img")]
    (a,) = m.amortised
    assert (a.src, a.dst, a.amortised, a.key) == ("img", "z", True, "img~>z")
    assert a.terms[0].pre == "tanh"


def test_loops_and_interpolation():
    m = parse_model(
        "model m {\n"
        "  param depth = 4\n"
        "  for i in 1..depth { node h{i}: [8] }\n"
        "  for i in 2..depth { h{i-1} -> h{i} : dense }\n"
        "  for i in 1..2 { for j in i..2 { node g{i}_{j}: [1] } }\n"
        "  for i in 3..2 { node never{i}: [1] }\n"
        "  query q { clamp h1; read h{depth} }\n"
        "}\n"
    )
    assert [n.name for n in m.nodes] == ["h1", "h2", "h3", "h4", "g1_1", "g1_2", "g2_2"]
    assert edges(m) == [("h1", "h2"), ("h2", "h3"), ("h3", "h4")]
    assert m.queries[0].read == ("h4",)
    # every iteration points at the loop body text
    assert {n.span for n in m.nodes[:4]} == {Span("<string>", 3, 28, 3, 32)}


def test_blocks_with_name_and_number_arguments():
    m = parse_model(
        "model m {\n"
        "  param width = 16\n"
        "  block res(src, dst, n, f) {\n"
        "    node dst: [n] act = f\n"
        "    node {dst}_aux: [width]\n"
        "    src -> dst : dense(pre = f) + identity\n"
        "  }\n"
        "  node h0: [16]\n"
        "  for i in 1..2 { use res(h{i-1}, h{i}, width, relu) }\n"
        "  use res(h2, top, n = 2 * width, f = tanh)\n"
        "}\n"
    )
    assert [(n.name, n.shape, n.act) for n in m.nodes] == [
        ("h0", (16,), "identity"), ("h1", (16,), "relu"), ("h1_aux", (16,), "identity"),
        ("h2", (16,), "relu"), ("h2_aux", (16,), "identity"), ("top", (32,), "tanh"),
        ("top_aux", (16,), "identity")]
    assert edges(m) == [("h0", "h1"), ("h1", "h2"), ("h2", "top")]
    assert m.edges[2].terms[0].pre == "tanh"
    assert m.nodes[1].span.line == 4  # spans point into the block body


def test_block_parameters_shadow_and_scopes_are_lexical():
    m = parse_model(
        "param width = 3\n"
        "block b(width) { node x{width}: [width] }\n"
        "model m {\n  use b(5)\n  for i in 1..2 { param k = i * 10; node y{k}: [width] }\n}\n"
    )
    assert [(n.name, n.shape) for n in m.nodes] == [("x5", (5,)), ("y10", (3,)), ("y20", (3,))]


def test_includes_pull_blocks_and_params(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "layers.pcg").write_text(
        'include "common.pcg"\n'
        "block layer(src, dst) { node dst: [hidden] act = relu; src -> dst : dense }\n"
        "model ignored { node zzz: [1] }\n")
    (tmp_path / "lib" / "common.pcg").write_text("param hidden = 32\n")
    main = tmp_path / "main.pcg"
    main.write_text('include "lib/layers.pcg"\ninclude "lib/common.pcg"\n'
                    "model m {\n  node x: [4]\n  use layer(x, h)\n}\n")
    m = load(main, validate=False)
    assert [(n.name, n.shape) for n in m.nodes] == [("x", (4,)), ("h", (32,))]
    assert m.node("h").span.file.endswith("layers.pcg")
    assert m.params == ()  # included parameters are usable but not the model's own


def test_queries_and_name_spans():
    m = parse_model("model m {\n  query train { clamp x, y }\n"
                    "  query test { clamp x; read y; init h1 = mem }\n}\n")
    tr, te = m.queries
    assert (tr.name, tr.clamp, tr.read, tr.init) == ("train", ("x", "y"), (), ())
    assert (te.clamp, te.read, te.init) == (("x",), ("y",), (("h1", "mem"),))
    assert dict(te.name_spans)["y"] == Span("<string>", 3, 30, 3, 31)
    assert m.query("test") is te


def test_lowering_is_permissive_about_node_names():
    m = parse_model("model m {\n  node x: [2]\n  node x: [3]\n  x -> nowhere : dense\n}\n")
    assert [n.name for n in m.nodes] == ["x", "x"]
    assert edges(m) == [("x", "nowhere")]


def test_declaration_order_does_not_change_the_graph():
    stmts = ["node x: [4]", "node h1, h2: [8] act = tanh", "node y: [2]",
             "x -> h1 -> h2 : dense", "h2 -> y : dense(pre = relu)", "h1 -> y : identity |> dense"]
    graphs = []
    for perm in itertools.islice(itertools.permutations(stmts), 0, None, 97):
        G = to_graph(parse_model("model m {\n" + "\n".join(perm) + "\n}\n"))
        graphs.append((sorted(G.nodes(data="ir")), sorted((u, v, d["ir"])
                                                          for u, v, d in G.edges(data=True))))
    assert len(graphs) > 5 and all(g == graphs[0] for g in graphs)


def test_models_directory_loads(models_dir):
    names = sorted(p.stem for p in models_dir.glob("*.pcg"))
    assert {"mlp_fmnist", "resnet128", "resnet", "decoder", "hybrid", "cyclic_digits",
            "conv_mnist", "conv_cifar", "digits_mlp"} <= set(names)
    m = load(models_dir / "resnet128.pcg", validate=False)
    assert len(m.nodes) == 129 and len(m.edges) == 128
    assert m.settings.get("steps") == 128 and m.settings.get("parameterisation") == "mupc"
    assert all(not t.bias for e in m.edges for t in e.terms if t.chain[0].kind == "dense")


def test_load_accepts_text_and_paths(tmp_path):
    text = "model m { node x: [2] }"
    assert load(text, validate=False).name == "m"
    p = tmp_path / "a.pcg"
    p.write_text(text)
    assert load(str(p), validate=False).source == str(p)
    with pytest.raises(Exception) as info:
        load(str(tmp_path / "missing.pcg"))
    assert "no such file" in str(info.value)
