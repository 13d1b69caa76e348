"""Building networks: grouping into stacked layers, parameters, parameterisations, determinism."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _build as b
from pcgraph import energy, build, compile_query
from pcgraph._network import stable_hash
from pcgraph._plan import plan_network


def test_mlp_groups_are_stacked():
    m = b.mlp([784, 512, 512, 512, 512, 10], act="gelu", out_energy="categorical")
    net = build(m, stack=True)
    groups = {g.names for g in net.groups}
    assert groups == {("h1", "h2", "h3", "h4"), ("x",), ("y",)}
    stacked = [t for t in net.plan.terms if t.size > 1]
    assert len(net.plan.terms) == 3 and len(stacked) == 1
    tg = stacked[0]
    assert tg.names == ("h1->h2", "h2->h3", "h3->h4")
    assert tg.src_slice == (0, 3) and tg.tgt_slice == (1, 4)
    k = net.plan.terms.index(tg)
    assert net.params[k][0]["W"].shape == (3, 512, 512)
    assert net.params[k][0]["b"].shape == (3, 512)
    # "auto" on the CPU: groups of fewer than 8 members are not stacked; parameters are the same
    auto = build(m, stack="auto")
    if jax.default_backend() == "cpu":
        assert all(t.size == 1 for t in auto.plan.terms)
    np.testing.assert_array_equal(auto.term_params("h2->h3")[0]["W"], net.term_params("h2->h3")[0]["W"])
    moved = auto.load_named_params(net.named_params())
    for k, v in moved.named_params().items():
        np.testing.assert_array_equal(v[0]["W"], net.term_params(k)[0]["W"])


def test_residual_128_is_a_few_groups():
    m = b.resnet(128, 8, 6, 3)
    net = build(m)
    assert len(net.groups) == 3  # x, y, h1..h128
    assert len(net.plan.terms) == 4  # x->h1, dense h->h, identity h->h, h128->y
    sizes = sorted(t.size for t in net.plan.terms)
    assert sizes == [1, 1, 127, 127]
    # static plan: hashable, no graph objects, equal for equal models
    assert hash(net.plan) == hash(build(m).plan)
    assert net.plan == build(m).plan


def test_stack_option_splits_groups():
    m = b.mlp([5, 6, 6, 6, 3])
    full, none, two = build(m, stack=True), build(m, stack=False), build(m, stack=3)
    assert max(g.size for g in none.groups) == 1 and max(t.size for t in none.plan.terms) == 1
    assert max(t.size for t in full.plan.terms) == 2
    assert max(t.size for t in two.plan.terms) == 1  # groups below 3 members split
    for net in (none, two):  # same parameters whatever the stacking
        for name in full.term_names():
            for p, q in zip(full.term_params(name), net.term_params(name)):
                np.testing.assert_array_equal(p["W"], q["W"])
    rng = np.random.default_rng(0)
    vals = {n: rng.standard_normal((4, *full.node_shape(n))) for n in full.node_names}
    e = [float(eqx.filter_jit(energy)(n, n.pack(vals))) for n in (full, none)]
    assert e[0] == pytest.approx(e[1], rel=1e-6)


def test_declaration_order_does_not_matter():
    m = b.model(
        "g",
        [b.node("x", 4), b.node("a", 6, act="tanh"), b.node("b2", 6, act="tanh"),
         b.node("b10", 6, act="tanh"), b.node("y", 3)],
        [b.edge("x", "a"), b.edge("a", "b2"), b.edge("a", "b10"), b.edge("b2", "y"),
         b.edge("b10", "y"), b.edge("b10", "b2")],
    )
    rng = np.random.default_rng(0)
    perm = m.replace(nodes=tuple(m.nodes[i] for i in rng.permutation(len(m.nodes))),
                     edges=tuple(m.edges[i] for i in rng.permutation(len(m.edges))))
    n1, n2 = build(m, seed=3, stack=True), build(perm, seed=3, stack=True)
    assert n1.plan.layout == n2.plan.layout
    assert ("a", "b2", "b10") in n1.plan.layout
    for name in n1.term_names():
        np.testing.assert_array_equal(n1.term_params(name)[0]["W"], n2.term_params(name)[0]["W"])
    vals = {n: rng.normal(size=(5, *n1.node_shape(n))) for n in n1.node_names}
    E = eqx.filter_jit(energy)
    assert float(E(n1, n1.pack(vals))) == float(E(n2, n2.pack(vals)))
    # the key of a term depends on its name only
    assert stable_hash("a->b2") == stable_hash("a->b2") != stable_hash("a->b10")
    n3 = build(m, seed=4)
    assert not np.allclose(n1.term_params("x->a")[0]["W"], n3.term_params("x->a")[0]["W"])


def test_natural_order_within_group():
    m = b.chain([f"h{i}" for i in (1, 10, 2, 3)], [4, 4, 4, 4])
    net = build(m, stack=True)
    assert ("h2", "h3", "h10") in net.plan.layout


@pytest.mark.parametrize("init,std", [("default", None), ("normal", 1.0), ("kaiming", None),
                                      ("xavier", None), ("zeros", 0.0)])
def test_weight_inits(init, std):
    fi, fo = 400, 300
    net = build(b.chain(["u", "v"], [fi, fo], name="c").replace(
        edges=(b.edge("u", "v", b.dense(init=init)),)))
    W = np.asarray(net.term_params("u->v")[0]["W"])
    assert W.shape == (fi, fo)
    expect = {"default": 1 / math.sqrt(fi), "kaiming": math.sqrt(2 / fi),
              "xavier": math.sqrt(2 / (fi + fo))}.get(init, std)
    assert W.std() == pytest.approx(expect, rel=0.02, abs=1e-12)
    np.testing.assert_array_equal(net.term_params("u->v")[0]["b"], 0)


def test_orthogonal_init():
    net = build(b.model("o", [b.node("u", 12), b.node("v", 8)],
                        [b.edge("u", "v", b.dense(init="orthogonal"))]))
    W = np.asarray(net.term_params("u->v")[0]["W"])
    np.testing.assert_allclose(W.T @ W, np.eye(8), atol=1e-5)


def test_mupc_scales_residual():
    D, N, H, C = 12, 16, 4, 3
    net = build(b.resnet(H, N, D, C))
    L = H + 1  # weight layers on the longest path x -> h1 -> ... -> h4 -> y
    assert net.plan.depth == L
    s = net.scales()
    assert s["x->h1"] == pytest.approx(1 / math.sqrt(D))
    for i in range(2, H + 1):
        assert s[f"h{i-1}->h{i}[0]"] == pytest.approx(1 / math.sqrt(N * L))
        assert s[f"h{i-1}->h{i}[1]"] == 1.0  # identity skip
    assert s[f"h{H}->y"] == pytest.approx(1 / N)
    # μPC weights are N(0, 1)
    W = np.asarray(net.term_params("h1->h2[0]")[0]["W"])
    assert W.std() == pytest.approx(1.0, rel=0.15)


def test_mupc_scales_without_skips_and_standard():
    m = b.mlp([10, 20, 20, 5], act="tanh", parameterisation="mupc")
    s = build(m).scales()
    assert s["x->h1"] == pytest.approx(1 / math.sqrt(10))
    assert s["h1->h2"] == pytest.approx(1 / math.sqrt(20))
    assert s["h2->y"] == pytest.approx(1 / 20)
    assert set(build(m, parameterisation="standard").scales().values()) == {1.0}


def test_network_is_a_pytree_of_parameters():
    net = build(b.mlp([4, 5, 5, 2]))
    leaves = jax.tree_util.tree_leaves(net)
    assert all(isinstance(x, jax.Array) for x in leaves)
    assert net.n_params() == 4 * 5 + 5 + 5 * 5 + 5 + 5 * 2 + 2
    params, static = eqx.partition(net, eqx.is_array)
    assert eqx.combine(params, static).plan is net.plan


def test_pack_unpack_roundtrip():
    net = build(b.mlp([4, 5, 5, 2]))
    vals = {n: jnp.full((3, *net.node_shape(n)), i, float) for i, n in enumerate(net.node_names)}
    h = net.pack(vals)
    assert [a.shape for a in h] == [a.shape for a in net.zeros(3)]
    out = net.unpack(h)
    for n in vals:
        np.testing.assert_array_equal(out[n], vals[n])
    with pytest.raises(KeyError):
        net.pack({"nope": jnp.zeros((3, 4))})


def test_compile_query_masks():
    m = b.mlp([4, 5, 5, 2])
    q = compile_query(m, "test")  # clamp x, read y: y is a free leaf
    assert q.free_names == ("h1", "h2")
    assert q.leaf_names == ("y",)
    assert hash(q) == hash(compile_query(build(m), "test"))
    qt = compile_query(m, "train")
    assert qt.leaf_names == () and qt.free_names == ("h1", "h2")
    with pytest.raises(KeyError):
        compile_query(m, {"clamp": ["zz"]})
    plan = plan_network(m)
    assert plan.is_dag
