"""Unit tests of each activity-initialisation definition (seed 004 §3–4, DESIGN.md §2).

The definitions are tested on plain ``{node: [B, *shape]}`` activities, independent of the engine:
avg = class means of the previous batch (eq. 7), null = carry-over, mem = eq. 8 written out by hand,
least-squares V reproduces the reference on the first batch, sweep is deterministic and leaves out
exactly the DFS feedback edges, random has the requested mean/std.
"""

from __future__ import annotations

import itertools

import equinox as eqx
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import optax
import pytest

from pcgraph import _cost, _graph as G_, _init_plan as P, _initializers as I, _memory as M


def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


# ----------------------------------------------------------------------------- memory (eq. 8-9)
def test_retrieve_single_head_is_eq8_by_hand(x64):
    mem = M.init_memory(jax.random.key(0), obs_size=7, out_shape=5, patterns=6, embed=4, delta=3.0)
    # give every parameter a nonzero value so the test sees each of them
    k1, k2 = jax.random.split(jax.random.key(1))
    mem = eqx.tree_at(lambda m: (m.bhat, m.V, m.scale), mem,
                      (jax.random.normal(k1, mem.bhat.shape), jax.random.normal(k2, mem.V.shape),
                       mem.scale * 40.0))
    o = np.asarray(jax.random.normal(jax.random.key(2), (9, 7)))
    Q, b, K, V = (np.asarray(a[0]) for a in (mem.Q, mem.b, mem.K, mem.V))
    expect = _np_softmax(3.0 * (o @ Q + b) @ K.T) @ V
    got = np.asarray(M.retrieve(mem, o))
    assert got.shape == (9, 5)
    np.testing.assert_allclose(got, expect, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("combine", ["mean", "concat"])
def test_retrieve_multihead_by_hand(x64, combine):
    H = 3
    mem = M.init_memory(jax.random.key(0), obs_size=4, out_shape=(2, 3), patterns=5, heads=H,
                        embed=2, delta=2.0, combine=combine)
    mem = eqx.tree_at(lambda m: (m.V, m.bhat, m.scale), mem,
                      (jax.random.normal(jax.random.key(3), mem.V.shape),
                       jax.random.normal(jax.random.key(5), mem.bhat.shape), mem.scale * 10))
    o = np.asarray(jax.random.normal(jax.random.key(4), (8, 4)))
    heads = [
        _np_softmax(2.0 * (o @ np.asarray(mem.Q[k]) + np.asarray(mem.b[k])) @ np.asarray(mem.K[k]).T)
        @ np.asarray(mem.V[k])
        for k in range(H)
    ]
    expect = np.mean(heads, axis=0) if combine == "mean" else np.concatenate(heads, axis=-1)
    got = np.asarray(M.retrieve(mem, o))
    assert got.shape == (8, 2, 3)
    np.testing.assert_allclose(got.reshape(8, 6), expect, rtol=1e-12, atol=1e-12)


def test_concat_needs_divisible_size():
    with pytest.raises(ValueError, match="divisible"):
        M.init_memory(jax.random.key(0), 4, 10, heads=3, combine="concat")
    with pytest.raises(ValueError, match="combine"):
        M.init_memory(jax.random.key(0), 4, 10, combine="sum")


def test_untrained_memory_initialises_to_zero():
    mem = M.init_memory(jax.random.key(0), 12, (3, 4), patterns=8, heads=2)
    out = M.retrieve(mem, jnp.ones((5, 12)))
    assert out.shape == (5, 3, 4) and float(jnp.abs(out).max()) == 0.0


@pytest.mark.parametrize("combine,heads", [("mean", 1), ("mean", 4), ("concat", 2)])
def test_lstsq_values_reproduce_reference_first_batch(x64, combine, heads):
    B, d, n = 16, 30, 12
    mem = M.init_memory(jax.random.key(0), d, n, patterns=24, heads=heads, embed=16, delta=200.0,
                        combine=combine)
    o = jax.random.uniform(jax.random.key(1), (B, d))
    h_ref = jax.random.normal(jax.random.key(2), (B, n))
    fitted = M.fit_values_lstsq(mem, o, h_ref)
    assert float(jnp.abs(M.retrieve(fitted, o) - h_ref).max()) < 1e-5
    # only V changed
    for f in ("Q", "b", "K", "Qhat", "bhat", "scale"):
        assert jnp.array_equal(getattr(fitted, f), getattr(mem, f))


def test_lstsq_float32_batch200_with_calibration():
    """Seed 004's batch size in float32: calibrating the query first keeps A well conditioned."""
    B, d, n = 200, 784, 64
    mem = M.init_memory(jax.random.key(0), d, n, patterns=256, embed=128, delta=200.0)
    o = jax.random.uniform(jax.random.key(1), (B, d))
    h_ref = jax.random.normal(jax.random.key(2), (B, n))
    mem = M.calibrate_query(mem, o)
    fitted = M.fit_values_lstsq(mem, o, h_ref)
    assert float(jnp.abs(M.retrieve(fitted, o) - h_ref).max()) < 1e-3


def test_lstsq_is_least_squares_when_p_below_batch(x64):
    """p < B: not exact, but the residual is orthogonal to the column space of A (normal equations)."""
    mem = M.init_memory(jax.random.key(0), 10, 3, patterns=4, embed=8, delta=200.0)
    mem = M.calibrate_query(mem, jax.random.normal(jax.random.key(5), (20, 10)))
    o = jax.random.normal(jax.random.key(1), (20, 10))
    h = jax.random.normal(jax.random.key(2), (20, 3))
    fitted = M.fit_values_lstsq(mem, o, h)
    A = M.attention(fitted, o)[0]
    r = M.retrieve(fitted, o) - h
    np.testing.assert_allclose(np.asarray(A.T @ r), 0.0, atol=1e-10)


def test_memory_loss_is_eq9_and_training_reduces_it(x64):
    mem = M.init_memory(jax.random.key(0), 6, 4, patterns=8, embed=8, delta=200.0)
    o = jax.random.normal(jax.random.key(1), (10, 6))
    target = jax.random.normal(jax.random.key(2), (10, 4))
    mem = M.calibrate_query(mem, o)
    loss = M.memory_loss(mem, o, target)
    by_hand = np.sum((np.asarray(M.retrieve(mem, o)) - np.asarray(target)) ** 2) / 10
    np.testing.assert_allclose(float(loss), by_hand, rtol=1e-12)
    opt = optax.adam(1e-2)
    st = opt.init(mem)

    @jax.jit
    def step(m, s):
        l, g = jax.value_and_grad(M.memory_loss)(m, o, target)
        u, s = opt.update(g, s, m)
        return optax.apply_updates(m, u), s, l

    for _ in range(200):
        mem, st, _ = step(mem, st)
    assert float(M.memory_loss(mem, o, target)) < 0.2 * float(loss)


# ----------------------------------------------------------------------------- zero / random
def test_zero():
    h = I.zero({"a": (3,), "b": (2, 2)}, batch=4)
    assert h["a"].shape == (4, 3) and h["b"].shape == (4, 2, 2)
    assert all(float(jnp.abs(x).max()) == 0 for x in h.values())


def test_random_has_requested_mean_and_std():
    h = I.random(jax.random.key(0), {"a": (500,), "b": (20, 25)}, batch=200, mean=0.3, std=2.0)
    for x in h.values():
        x = np.asarray(x)
        assert abs(x.mean() - 0.3) < 0.02  # se = 2/sqrt(1e5) ≈ 0.006
        assert abs(x.std() - 2.0) < 0.02
    # deterministic per node name, independent of the other nodes
    again = I.random(jax.random.key(0), {"a": (500,)}, batch=200, mean=0.3, std=2.0)
    assert jnp.array_equal(again["a"], h["a"])
    assert not jnp.allclose(h["a"][:, :25], h["b"][:, 0, :])
    with pytest.raises(ValueError):
        I.random(jax.random.key(0), {"a": (2,)}, 1, std=-1.0)


# ----------------------------------------------------------------------------- null
def test_null_carries_over_previous_batch():
    prev = {"h1": jnp.arange(12.0).reshape(4, 3), "h2": -jnp.ones((4, 2))}
    out = I.null(prev)
    assert all(jnp.array_equal(out[v], prev[v]) for v in prev)
    # through the state: record then read back
    st = I.make_init_state(prev={v: jnp.zeros_like(x) for v, x in prev.items()})
    st = I.record(st, {**prev, "x": jnp.ones((4, 5))})
    assert set(st.prev) == {"h1", "h2"} and int(st.batches) == 1
    assert jnp.array_equal(I.null(st.prev)["h1"], prev["h1"])
    # a smaller or larger batch: truncated / tiled
    assert jnp.array_equal(I.null(prev, 2)["h1"], prev["h1"][:2])
    big = I.null(prev, 6)["h1"]
    assert big.shape == (6, 3) and jnp.array_equal(big[4:], prev["h1"][:2])


# ----------------------------------------------------------------------------- avg (eq. 7, 10)
def test_avg_is_class_mean_of_previous_batch():
    rng = np.random.default_rng(0)
    C, per = 4, 3
    y_prev = np.repeat(np.arange(C), per)
    rng.shuffle(y_prev)
    h_prev = {"h1": rng.normal(size=(C * per, 5)), "h2": rng.normal(size=(C * per, 2, 3))}
    means, counts = I.class_means({k: jnp.asarray(v) for k, v in h_prev.items()}, y_prev, C)
    np.testing.assert_array_equal(np.asarray(counts), [per] * C)
    y_new = np.repeat(np.arange(C), per)
    rng.shuffle(y_new)
    out = I.avg(means, counts, jnp.asarray(y_new))
    for v, x in h_prev.items():
        for i, c in enumerate(y_new):
            expect = x[y_prev == c].mean(0)  # (C/n) Σ_{j: y_j = y_i} h_j with n/C per class
            np.testing.assert_allclose(np.asarray(out[v][i]), expect, rtol=1e-5, atol=1e-6)
    # one-hot labels give the same answer
    out2 = I.avg(means, counts, jax.nn.one_hot(y_new, C))
    assert jnp.allclose(out2["h1"], out["h1"])


def test_avg_unseen_class_uses_fallback_and_state_records_means():
    h = {"h": jnp.array([[1.0], [3.0], [10.0], [20.0]])}
    st = I.make_init_state(means={"h": jnp.zeros((3, 1))}, num_classes=3)
    st = I.record(st, h, labels=jnp.array([0, 0, 1, 1]))
    np.testing.assert_allclose(np.asarray(st.means["h"]), [[2.0], [15.0], [0.0]])
    np.testing.assert_allclose(np.asarray(st.counts), [2, 2, 0])
    fb = {"h": jnp.full((3, 1), -7.0)}
    out = I.avg(st.means, st.counts, jnp.array([1, 2, 0]), fallback=fb)
    np.testing.assert_allclose(np.asarray(out["h"]), [[15.0], [-7.0], [2.0]])
    with pytest.raises(ValueError, match="labels"):
        I.record(st, h)


def _mlp_graph(L=5):
    G = nx.DiGraph()
    names = ["x"] + [f"h{i}" for i in range(1, L)] + ["y"]
    nx.add_path(G, names)
    return G


def test_hybrid_avg_forward_first_m_layers_by_depth():
    G = _mlp_graph(5)  # x -> h1 -> h2 -> h3 -> h4 -> y, L = 5 weight layers
    depth = G_.node_depths(G, {"x", "y"})
    assert depth == {"x": 0, "h1": 1, "h2": 2, "h3": 3, "h4": 4, "y": 0}
    m = P.default_hybrid_m(5)
    assert m == 3
    methods = P.hybrid_avg_methods(depth, ["h4", "h2", "h1", "h3"], m)
    assert methods == {"h1": "forward", "h2": "forward", "h3": "forward", "h4": "avg"}
    assert P.hybrid_avg_methods(depth, ["h1", "h2", "h3", "h4"], 0) == dict.fromkeys(
        ["h1", "h2", "h3", "h4"], "avg")
    G.add_edge("h3", "h1")
    with pytest.raises(ValueError, match="acyclic"):
        G_.node_depths(G, {"x", "y"})


# ----------------------------------------------------------------------------- sweep
def _loop_graph(order):
    G = nx.DiGraph()
    edges = [("img", "a"), ("a", "b"), ("b", "label"), ("b", "a"), ("a", "c"), ("c", "b")]
    G.add_nodes_from(order)
    G.add_edges_from([edges[i] for i in np.random.default_rng(len(order)).permutation(len(edges))])
    return G


def test_sweep_feedback_edges_are_exactly_the_dfs_back_edges_and_deterministic():
    results = set()
    for perm in itertools.permutations(["img", "a", "b", "c", "label"]):
        G = _loop_graph(list(perm))
        results.add(G_.feedback_edges(G, ["label", "img"]))
    assert len(results) == 1  # independent of declaration / insertion order
    (fb,) = results
    # DFS from img (natural order of clamped: img, label): img -> a -> b -> (a: back edge), b -> label
    # (clamped: ignored), a -> c -> b (done: cross edge, kept)
    assert fb == (("b", "a"),)
    G = _loop_graph(["img", "a", "b", "c", "label"])
    D = G.copy()
    D.remove_edges_from(fb)
    assert nx.is_directed_acyclic_graph(D)
    # every dropped edge closes a cycle of G
    for u, v in fb:
        assert nx.has_path(G, v, u)


def test_sweep_plan_and_values():
    G = _loop_graph(["img", "a", "b", "c", "label"])
    plan = P.sweep_plan(G, ["img", "label"])
    assert plan.dropped == (("b", "a"),)
    assert plan.order == ("a", "c", "b")
    assert plan.parents == {"a": ("img",), "c": ("a",), "b": ("a", "c")}
    assert plan.depth == {"a": 1, "c": 2, "b": 3}
    calls = []

    def predict(v, parents):
        calls.append((v, tuple(sorted(parents))))
        return sum(parents.values()) + 1.0

    h = {"img": jnp.ones((2, 3)), "label": jnp.zeros((2, 3)),
         **{v: jnp.full((2, 3), 100.0) for v in "abc"}}
    out = I.sweep(plan, h, predict)
    assert calls == [("a", ("img",)), ("c", ("a",)), ("b", ("a", "c"))]
    assert float(out["a"][0, 0]) == 2.0 and float(out["c"][0, 0]) == 3.0
    assert float(out["b"][0, 0]) == 6.0  # a + c + 1, the feedback b -> a never used
    assert jnp.array_equal(out["label"], h["label"])


def test_sweep_on_dag_drops_nothing_and_unreached_root_keeps_fallback():
    G = nx.DiGraph([("z", "h"), ("h", "img")])
    plan = P.sweep_plan(G, ["img"])
    assert plan.dropped == ()
    assert plan.order == ("z", "h") and plan.parents["z"] == ()
    out = I.sweep(plan, {"z": jnp.zeros((1, 2)), "h": jnp.ones((1, 2)), "img": jnp.ones((1, 2))},
                  lambda v, ps: 2 * sum(ps.values()) + 1)
    assert float(out["z"][0, 0]) == 0.0 and float(out["h"][0, 0]) == 1.0


# ----------------------------------------------------------------------------- amortised
def test_amortiser_matches_formula_and_learns(x64):
    from pcgraph import EdgeIR, TermIR, TransformIR

    e = EdgeIR("img", "z", (TermIR((TransformIR("dense"),), pre="tanh"),), amortised=True)
    am = I.init_amortiser(jax.random.key(0), [e], {"img": (6,), "z": (3,)}, acts={"z": "identity"})
    assert am.targets == ("z",)
    x = jax.random.normal(jax.random.key(1), (5, 6))
    t = am.terms["img~>z"][0]
    expect = np.tanh(np.asarray(x)) @ np.asarray(t.W) + np.asarray(t.b)
    np.testing.assert_allclose(np.asarray(I.amortised(am, {"img": x})["z"]), expect, rtol=1e-12)
    target = {"z": jax.random.normal(jax.random.key(2), (5, 3))}
    opt = optax.adam(5e-2)
    st = I.make_init_state(amortiser=am, optimizer=opt)
    l0 = I.amortiser_loss(am, {"img": x}, target)
    step = jax.jit(lambda s: I.train_learned(s, opt, jnp.zeros((5, 1)), {"img": x}, target))
    for _ in range(100):
        st, _ = step(st)
    assert float(I.amortiser_loss(st.amortiser, {"img": x}, target)) < 0.1 * float(l0)


def test_amortiser_chain_uses_upstream_value():
    am = I.init_amortiser(jax.random.key(0), [("h", "z"), ("img", "h")],
                          {"img": (4,), "h": (3,), "z": (2,)}, acts={"h": "relu"})
    assert am.targets == ("h", "z") and am.depth() == {"h": 1, "z": 2}
    x = jnp.ones((2, 4))
    out = am({"img": x})
    t1, t2 = am.terms["img~>h"][0], am.terms["h~>z"][0]
    h = jax.nn.relu(x @ t1.W + t1.b)
    assert jnp.allclose(out["h"], h) and jnp.allclose(out["z"], h @ t2.W + t2.b)
    with pytest.raises(ValueError, match="cycle"):
        I.init_amortiser(jax.random.key(0), [("a", "b"), ("b", "a")], {"a": (1,), "b": (1,)})


# ----------------------------------------------------------------------------- state
def test_init_state_trains_memories_jitted_and_roundtrips(tmp_path):
    o = jax.random.uniform(jax.random.key(1), (8, 10))
    mem = M.calibrate_query(M.init_memory(jax.random.key(0), 10, 4, patterns=8, embed=8), o)
    opt = optax.adam(1e-2)
    st = I.make_init_state(prev={"h": jnp.zeros((8, 4))}, means={"h": jnp.zeros((2, 4))},
                           num_classes=2, memories={"h": mem}, optimizer=opt)
    target = {"h": jax.random.normal(jax.random.key(2), (8, 4))}
    labels = jnp.array([0, 1] * 4)

    @jax.jit
    def step(s):
        s, loss = I.train_learned(s, opt, o, {}, target)
        return I.record(s, target, labels), loss

    losses = []
    for _ in range(50):
        st, loss = step(st)
        losses.append(float(loss))
    assert losses[-1] < losses[0] and int(st.batches) == 50
    path = tmp_path / "init.eqx"
    eqx.tree_serialise_leaves(path, st)
    like = I.make_init_state(prev={"h": jnp.zeros((8, 4))}, means={"h": jnp.zeros((2, 4))},
                             num_classes=2, memories={"h": mem}, optimizer=opt)
    back = eqx.tree_deserialise_leaves(path, like)
    for a, b in zip(jax.tree_util.tree_leaves(st), jax.tree_util.tree_leaves(back)):
        assert jnp.array_equal(a, b)
    np.testing.assert_allclose(np.asarray(I.memory_init(back.memories, o)["h"]),
                               np.asarray(M.retrieve(st.memories["h"], o)))


def test_observations_concatenate_clamped_in_natural_order():
    h = {"x10": jnp.full((2, 1), 10.0), "x2": jnp.full((2, 2), 2.0), "y": jnp.zeros((2, 1))}
    o = I.observations(h, ["x10", "x2"])
    np.testing.assert_array_equal(np.asarray(o[0]), [2.0, 2.0, 10.0])


# ----------------------------------------------------------------------------- SMM
def test_smm_accounting():
    G = _mlp_graph(5)
    fw = {"x": "clamped", "y": "clamped", **{f"h{i}": "forward" for i in range(1, 5)}}
    assert _cost.init_smm(fw, G) == 5  # + L for a forward pass (eq. 6)
    assert _cost.smm_pc(5, _cost.init_smm(fw, G)) == 15 and _cost.smm_bp(5) == 9
    avg = {**fw, **{f"h{i}": "avg" for i in range(1, 5)}}
    assert _cost.init_smm(avg, G) == 0  # eq. 7 adds no matmul
    hyb = {**avg, "h1": "forward", "h2": "forward", "h3": "forward"}
    assert _cost.init_smm(hyb, G) == 4
    mem = {**avg, **{f"h{i}": "mem" for i in range(1, 5)}}
    assert _cost.init_smm(mem, G) == M.memory_smm() == 2
