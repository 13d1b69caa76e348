"""Prop. 3.2 (forward initialisation needs a DAG with every root clamped) and the auto init plan."""

import random

import pytest

from pcgraph import PcgError, graph_report, init_plan, query_feasibility
from pcgraph._feasibility import forward_order
from pcgraph import EdgeIR, ModelIR, NodeIR, QueryIR, SettingsIR, TermIR, TransformIR

DENSE = (TermIR((TransformIR("dense"),)),)


def model(edges, nodes=None, queries=(), amortised=(), settings=(), inits=None, name="m"):
    names = nodes or sorted({n for e in (*edges, *amortised) for n in e})
    inits = inits or {}
    return ModelIR(
        name,
        tuple(NodeIR(n, (4,), init=inits.get(n)) for n in names),
        tuple(EdgeIR(s, d, DENSE) for s, d in edges),
        tuple(EdgeIR(s, d, DENSE, amortised=True) for s, d in amortised),
        tuple(QueryIR(q[0], clamp=tuple(q[1]), init=tuple(q[2:])) for q in queries),
        SettingsIR(tuple(settings)),
    )


MLP = [("x", "h1"), ("h1", "h2"), ("h2", "y")]
LOOP = [("img", "a"), ("a", "b"), ("b", "label"), ("b", "a")]


def test_dag_with_clamped_roots_is_feasible():
    m = model(MLP, queries=[("train", ["x", "y"]), ("test", ["x"])])
    for q in ("train", "test"):
        f = query_feasibility(m, q)
        assert f.feasible and f.reason == "DAG with every root clamped"
        assert f.cycle == () and f.unclamped_roots == ()


def test_cycle_is_infeasible_and_named():
    m = model(LOOP, queries=[("train", ["img", "label"])])
    f = query_feasibility(m, "train")
    assert not f.feasible
    assert f.cycle == (("a", "b"), ("b", "a"))
    assert f.reason == "graph has a cycle a -> b -> a"


def test_generative_query_with_unclamped_root():
    m = model([("z", "h"), ("h", "img")], queries=[("train", ["img"])])
    f = query_feasibility(m, "train")
    assert not f.feasible
    assert f.unclamped_roots == ("z",)
    assert f.reason == "roots not clamped: z"


def test_cycle_and_unclamped_root_both_reported():
    m = model([("z", "a"), ("a", "b"), ("b", "a"), ("b", "y")], queries=[("q", ["y"])])
    f = query_feasibility(m, "q")
    assert f.reason == "graph has a cycle a -> b -> a; roots not clamped: z"


def test_cycle_through_a_clamped_node_is_cut_by_the_clamp():
    # x <-> h: x is data, so μ_h = f(x) is computable; the energy of x is the "output loss"
    m = model([("x", "h"), ("h", "x"), ("h", "y")], queries=[("q", ["x"]), ("free", ["y"])])
    f = query_feasibility(m, "q")
    assert f.feasible and "cycle passes through a clamped node" in f.reason
    assert init_plan(m, "q") == {"h": "forward", "x": "clamped", "y": "forward"}
    assert not query_feasibility(m, "free").feasible


def test_analyse_report():
    r = graph_report(model(MLP))
    assert r.is_dag and r.cycles == () and r.roots == ("x",) and r.leaves == ("y",)
    assert r.longest_path == 3
    r = graph_report(model(LOOP))
    assert not r.is_dag and r.longest_path is None
    assert r.cycles == ((("a", "b"), ("b", "a")),)
    assert r.roots == ("img",) and r.leaves == ("label",)


def test_analyse_two_cycles_and_self_loop_never_raise():
    r = graph_report(model([("a", "b"), ("b", "a"), ("c", "d"), ("d", "e"), ("e", "c"), ("f", "f")]))
    assert len(r.cycles) == 3
    assert r.cycles[0] == (("a", "b"), ("b", "a"))
    assert r.cycles[1] == (("c", "d"), ("d", "e"), ("e", "c"))
    assert r.cycles[2] == (("f", "f"),)


def test_undeclared_names_are_ignored_not_fatal():
    m = model([("x", "h"), ("h", "ghost")], nodes=["x", "h"], queries=[("q", ["x", "nope"])])
    assert graph_report(m).leaves == ("h",)
    assert query_feasibility(m, "q").feasible
    assert init_plan(m, "q") == {"h": "forward", "x": "clamped"}


def test_auto_plan_forward_and_mem():
    # x -> h1 -> h2 -> y plus a cycle c1 <-> c2 fed by h1 and feeding d
    edges = MLP + [("h1", "c1"), ("c1", "c2"), ("c2", "c1"), ("c2", "d"), ("z", "h2")]
    m = model(edges, queries=[("train", ["x", "y"])])
    plan = init_plan(m, "train")
    assert plan["x"] == plan["y"] == "clamped"
    assert plan["h1"] == "forward"
    assert plan["c1"] == plan["c2"] == "mem"  # on a cycle
    assert plan["d"] == "mem"  # downstream of a cycle
    assert plan["z"] == "mem"  # unclamped root
    assert plan["h2"] == "mem"  # has the unclamped root z upstream


def test_auto_plan_generative_all_mem():
    m = model([("z", "h"), ("h", "img")], queries=[("train", ["img"])])
    assert init_plan(m, "train") == {"h": "mem", "img": "clamped", "z": "mem"}


def test_auto_plan_hybrid_picks_amortised():
    m = model([("z", "h"), ("h", "img")], amortised=[("img", "z")],
              queries=[("train", ["img"])])
    assert init_plan(m, "train") == {"h": "mem", "img": "clamped", "z": "amortised"}


def test_amortised_chains_through_amortised_sources():
    m = model([("z", "h"), ("h", "img")], amortised=[("img", "h"), ("h", "z")],
              queries=[("train", ["img"]), ("gen", ["z"])])
    assert init_plan(m, "train") == {"h": "amortised", "img": "clamped", "z": "amortised"}
    # in the generative direction forward wins over amortised
    assert init_plan(m, "gen") == {"h": "forward", "img": "forward", "z": "clamped"}


def test_explicit_inits_and_priority():
    m = model(MLP, queries=[("train", ["x", "y"], ("h2", "zero"))],
              inits={"h1": "random", "h2": "mem"})
    assert init_plan(m, "train") == {"h1": "random", "h2": "zero", "x": "clamped", "y": "clamped"}
    # API overrides beat the query, which beats the node
    assert init_plan(m, "train", overrides={"h2": "null"})["h2"] == "null"
    # an explicit auto goes back to the automatic choice
    assert init_plan(m, "train", overrides={"h1": "auto"})["h1"] == "forward"


def test_non_auto_global_method_applies_to_free_nodes():
    m = model(MLP, queries=[("test", ["x"])], settings=[("init", "zero")], inits={"h2": "mem"})
    assert init_plan(m, "test") == {"h1": "zero", "h2": "mem", "x": "clamped", "y": "zero"}
    assert init_plan(m, "test", default="avg")["h1"] == "avg"


def test_sweep_is_never_chosen_by_auto():
    m = model(LOOP + MLP, queries=[("q", ["img"])])
    assert "sweep" not in init_plan(m, "q").values()


def test_forward_where_impossible_raises_naming_cycle():
    m = model(LOOP, queries=[("train", ["img", "label"])], settings=[("init", "forward")])
    with pytest.raises(PcgError) as exc:
        init_plan(m, "train")
    text = str(exc.value)
    assert "graph has a cycle a -> b -> a" in text and "mem" in text
    assert "free nodes that cannot be forward-initialised: a, b" in text
    assert {d.code for d in exc.value.diagnostics} == {"forward-infeasible"}


def test_forward_override_on_unclamped_root_raises():
    m = model([("z", "h"), ("h", "img")], queries=[("train", ["img"])])
    with pytest.raises(PcgError, match="z has no parents and is not clamped"):
        init_plan(m, "train", overrides={"z": "forward"})
    with pytest.raises(PcgError, match="h depends on unclamped root"):
        init_plan(m, "train", overrides={"h": "forward"})


def test_amortised_without_edge_raises():
    m = model(MLP, queries=[("q", ["x"])])
    with pytest.raises(PcgError, match="not the target of a ~> edge"):
        init_plan(m, "q", overrides={"h1": "amortised"})


def test_forward_order_respects_parents():
    edges = [("x", "a"), ("a", "c"), ("x", "b"), ("b", "c"), ("c", "y")]
    m = model(edges, queries=[("q", ["x"])])
    order = forward_order(m, "q", init_plan(m, "q"))
    assert order == ["a", "b", "c", "y"]


def test_results_independent_of_declaration_order():
    edges = LOOP + MLP + [("z", "h2"), ("h1", "a")]
    names = sorted({n for e in edges for n in e})
    qs = [("train", ["img", "x"]), ("gen", ["y"])]
    ref = model(edges, nodes=names, queries=qs, amortised=[("x", "z")])
    rng = random.Random(0)
    for _ in range(5):
        e2, n2 = edges[:], names[:]
        rng.shuffle(e2)
        rng.shuffle(n2)
        m = model(e2, nodes=n2, queries=qs, amortised=[("x", "z")])
        assert graph_report(m) == graph_report(ref)
        for q in ("train", "gen"):
            assert query_feasibility(m, q) == query_feasibility(ref, q)
            assert list(init_plan(m, q).items()) == list(init_plan(ref, q).items())
