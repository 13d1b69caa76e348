"""Activity initialisation inside the engine (``_init.Initialiser`` + the jitted steps).

Each definition is checked on a real network against a value computed independently: avg = class
means of the previous batch's relaxed activities, null = carry-over, forward = zero error everywhere
but the clamped output, mem = eq. 8 by hand, the least-squares values reproduce the reference
(forward where it exists, else the equilibrium from zero) on the first batch. Then Prop. 3.2
enforcement on DAG, cyclic, generative and hybrid models, the `auto` policy, SMM accounting, no
retracing with a carried state, and checkpoint round trips / exact resume of that state.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _build as b
from pathlib import Path
from pcgraph import energy, node_energies
from pcgraph._energy import forward_acts
from pcgraph import GradientDescent, Initialisation, infer
from pcgraph._infer import clamp_data
from pcgraph import InitError, PcgError, StepState, make_eval_step, make_train_step
from pcgraph._init import make_initialiser, resolve
from pcgraph import build, compile_query


def _np_softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def _data(n, d=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    return X, y


def _mlp(**settings):
    return b.mlp([6, 8, 8, 3], act="tanh", **settings)


def _loop(**settings):
    return b.model(
        "loop",
        [b.node("img", 6), b.node("a", 8, act="tanh"), b.node("b", 8, act="tanh"),
         b.node("label", 3)],
        [b.edge("img", "a"), b.edge("a", "b"), b.edge("b", "label"), b.edge("b", "a")],
        [b.query("train", ("img", "label")), b.query("test", ("img",), ("label",))], **settings)


def _gen():
    return b.model(
        "gen", [b.node("z", 3, prior=(0.0, 1.0)), b.node("h", 8, act="tanh"), b.node("img", 6)],
        [b.edge("z", "h"), b.edge("h", "img")], [b.query("train", ("img",))])


def _hybrid():
    from pcgraph import EdgeIR

    m = _gen()
    import dataclasses

    return dataclasses.replace(
        m, name="hyb", amortised=(EdgeIR("img", "z", (b.dense(pre="tanh"),), amortised=True),),
        queries=(b.query("train", ("img",)), b.query("infer", ("img",), ("z",))))


def _relax(net, q, h0, T=5, lr=0.1):
    return infer(net, q, h0, GradientDescent(T, optax.sgd(lr))).h


# ------------------------------------------------------------------------------ definitions
def test_null_carries_over_and_avg_is_class_means_of_previous_batch(x64):
    net = build(_mlp(), seed=0)
    q = compile_query(net, "train")
    X, y = _data(12)
    batch1 = {"x": X[:6], "y": y[:6]}
    batch2 = {"x": X[6:], "y": y[6:]}
    for method in ("null", "avg"):
        step = make_train_step(net, q, weight_optimizer=optax.sgd(0.0), **b.opts(net, steps=5, activity_lr=0.1, init=method))  # weights fixed: easy replay
        state = step.init(net, batch_size=6)
        init = step.initialiser
        assert init.uses(method) and init.stateful
        h1 = clamp_data(net, q, batch1)
        h0 = init(net, h1, state.carry)
        assert float(jnp.abs(h0[1]).max()) == 0.0  # first batch: nothing carried yet -> zero
        hs1 = net.unpack(_relax(net, q, h0))
        net1, state, _ = step(net, state, batch1)
        h2 = clamp_data(net, q, batch2)
        got = net.unpack(init(net1, h2, state.carry))
        for v in ("h1", "h2"):
            if method == "null":
                expect = np.asarray(hs1[v])
            else:  # eq. 7: the mean over the previous batch's samples of the same class
                prev = np.asarray(hs1[v])
                expect = np.stack([prev[y[:6] == c].mean(0) if (y[:6] == c).any() else
                                   np.zeros(prev.shape[1]) for c in y[6:]])
            np.testing.assert_allclose(np.asarray(got[v]), expect, atol=1e-10)


def test_forward_init_zero_error_everywhere_but_the_clamped_output(x64):
    net = build(_mlp(), seed=1)
    q = compile_query(net, "train")
    X, y = _data(5)
    h = clamp_data(net, q, {"x": X, "y": y})
    h0 = make_initialiser(net, q, Initialisation("forward"))(net, h)
    E = node_energies(net, h0, q)
    assert set(E) == {"h1", "h2", "y"}
    assert float(E["h1"]) == 0.0 and float(E["h2"]) == 0.0 and float(E["y"]) > 0
    q_out = q.with_counts(q.clamped_targets)
    np.testing.assert_allclose(float(energy(net, h0, q)), float(energy(net, h0, q_out)))
    # auto picks forward on this DAG, and the step reports energy_start = output loss
    step = make_train_step(net, "train", **b.opts(net, steps=3))
    assert step.initialiser.methods == {"x": "clamped", "h1": "forward", "h2": "forward",
                                        "y": "clamped"}
    _, _, met = step(net, step.init(net), {"x": X, "y": y})
    np.testing.assert_allclose(float(met["energy_start"]), float(met["loss"]), rtol=1e-10)


def test_mem_retrieval_is_eq8_by_hand(x64):
    net = build(_loop(), seed=2)
    step = make_train_step(net, "train", **b.opts(net, steps=4, init_options={"mem_patterns": 5,
                                                                 "mem_embed": 4}))
    X, y = _data(8)
    state = step.init(net)
    for _ in range(2):  # fitted on the first batch, trained on both
        net, state, _ = step(net, state, {"img": X, "label": y})
    init = step.initialiser
    assert init.methods["a"] == init.methods["b"] == "mem" and init.obs == ("img",)
    q = step.query
    h0 = net.unpack(init(net, clamp_data(net, q, {"img": X, "label": y}), state.carry))
    for v in ("a", "b"):
        mem = state.carry.memories[v]
        Q, bb, K, V = (np.asarray(t[0]) for t in (mem.Q, mem.b, mem.K, mem.V))
        expect = _np_softmax(mem.delta * (X @ Q + bb) @ K.T) @ V
        np.testing.assert_allclose(np.asarray(h0[v]), expect, rtol=1e-10, atol=1e-12)
    # the test query (label not clamped) retrieves from the same memories
    ev = make_eval_step(net, "test", **b.opts(net, steps=0))
    out = ev(net, {"img": X}, carry=state)
    assert out["label"].shape == (8, 3)
    with pytest.raises(InitError, match="carry"):
        ev(net, {"img": X})


def test_lstsq_values_reproduce_forward_reference_on_first_batch(x64):
    """mem asked on a DAG: the reference is the forward pass."""
    net = build(_mlp(), seed=3)
    q = compile_query(net, "train")
    step = make_train_step(net, q, **b.opts(net, init="mem", steps=2, init_options={"mem_patterns": 16}))
    init = step.initialiser
    assert not init.ref_needs_relax
    X, y = _data(8)
    h = clamp_data(net, q, {"x": X, "y": y})
    carry = init.prepare(net, h, step.init_carry(net, 8), None)
    got = init(net, h, carry)
    ref = forward_acts(net, h, ("h1", "h2"))
    for gi in range(len(ref)):
        np.testing.assert_allclose(np.asarray(got[gi]), np.asarray(ref[gi]), atol=1e-5)
    # prepare runs only on the first batch
    later = eqx.tree_at(lambda s: s.batches, carry, carry.batches + 1)
    again = init.prepare(net, h, eqx.tree_at(lambda s: s.memories, later,
                                             step.init_carry(net, 8).memories), None)
    assert float(jnp.abs(init(net, h, again)[1]).max()) == 0.0


def test_lstsq_values_reproduce_equilibrium_from_zero_on_cyclic_graph(x64):
    net = build(_loop(), seed=4)
    q = compile_query(net, "train")
    step = make_train_step(net, q, **b.opts(net, steps=3, activity_lr=0.1, init_options={"mem_patterns": 16, "mem_ref_steps": 50}))
    init = step.initialiser
    assert init.ref_needs_relax
    X, y = _data(8)
    h = clamp_data(net, q, {"img": X, "label": y})
    relax = lambda hh: _relax(net, q, hh, T=50)  # noqa: E731
    carry = init.prepare(net, h, step.init_carry(net, 8), relax)
    got = net.unpack(init(net, h, carry))
    ref = net.unpack(relax(h))  # zero init (clamp_data leaves free nodes at zero) + 50 steps
    for v in ("a", "b"):
        np.testing.assert_allclose(np.asarray(got[v]), np.asarray(ref[v]), atol=1e-5)
    assert float(jnp.abs(got["a"]).max()) > 1e-3


def test_sweep_leaves_out_the_feedback_edge(x64):
    net = build(_loop(), seed=5)
    q = compile_query(net, "test")
    init = make_initialiser(net, q, Initialisation("sweep"), train=False)
    assert init.sweep_plan.dropped == (("b", "a"),) and init.smm == 3
    X, _ = _data(4)
    h = clamp_data(net, q, {"img": X})
    got = net.unpack(init(net, h))
    (pa,), (pb,) = net.term_params("img->a"), net.term_params("a->b")
    a = np.tanh(X @ np.asarray(pa["W"]) + np.asarray(pa["b"]))
    bb = np.tanh(a @ np.asarray(pb["W"]) + np.asarray(pb["b"]))
    np.testing.assert_allclose(np.asarray(got["a"]), a, atol=1e-12)
    np.testing.assert_allclose(np.asarray(got["b"]), bb, atol=1e-12)


def test_amortised_init_is_the_bottom_up_path_and_learns(x64):
    net = build(_hybrid(), seed=6)
    step = make_train_step(net, "train", **b.opts(net, steps=10, activity_lr=0.1, init_options={"learned_lr": 1e-2}))
    init = step.initialiser
    assert init.methods == {"img": "clamped", "z": "amortised", "h": "mem"}
    rng = np.random.default_rng(0)
    X = rng.standard_normal((16, 6))
    state = step.init(net)
    amort = state.carry.amortiser
    (t,) = amort.terms["img~>z"]
    h0 = net.unpack(init(net, clamp_data(net, step.query, {"img": X}), state.carry))
    np.testing.assert_allclose(np.asarray(h0["z"]), np.tanh(X) @ np.asarray(t.W), atol=1e-12)
    losses = []
    for _ in range(30):
        net, state, met = step(net, state, {"img": X})
        losses.append(float(met["init_loss"]))
    assert losses[-1] < 0.5 * losses[0]
    assert step.smm["init_smm"] == 2 and step.smm["smm_pc"] == 22


# ------------------------------------------------------------------------------ enforcement
def _plan(model, query="train", **kw):
    net = build(model, seed=0)
    return resolve(net.model, compile_query(net, query), kw.get("default"),
                   tuple(sorted(kw.get("overrides", {}).items())))


def test_auto_per_node_on_dag_cyclic_generative_and_hybrid():
    assert _plan(_mlp()) == {"x": "clamped", "h1": "forward", "h2": "forward", "y": "clamped"}
    assert _plan(_loop()) == {"img": "clamped", "a": "mem", "b": "mem", "label": "clamped"}
    assert _plan(_gen()) == {"z": "mem", "h": "mem", "img": "clamped"}
    assert _plan(_hybrid()) == {"z": "amortised", "h": "mem", "img": "clamped"}
    # a DAG with one unclamped root r feeding h2: h1 forward, h2 (downstream of r) and r mem;
    # a node downstream of a cycle is mem too
    m = b.model("mix", [b.node("x", 2), b.node("r", 2), b.node("h1", 2), b.node("h2", 2),
                        b.node("y", 2)],
                [b.edge("x", "h1"), b.edge("h1", "h2"), b.edge("r", "h2"), b.edge("h2", "y")],
                [b.query("train", ("x", "y"))])
    assert _plan(m) == {"x": "clamped", "r": "mem", "h1": "forward", "h2": "mem", "y": "clamped"}
    m = b.model("down", [b.node("x", 2), b.node("a", 2), b.node("c", 2), b.node("d", 2)],
                [b.edge("x", "a"), b.edge("a", "c"), b.edge("c", "a"), b.edge("c", "d"),
                 b.edge("d", "x")], [b.query("train", ("x",))])
    assert _plan(m) == {"x": "clamped", "a": "mem", "c": "mem", "d": "mem"}
    # auto never picks sweep
    assert "sweep" not in _plan(_loop(), "test").values()


def test_forward_where_impossible_names_the_cycle_or_roots_and_suggests_mem():
    with pytest.raises(PcgError) as info:
        make_train_step(build(_loop(), seed=0), "train", **b.opts(build(_loop(), seed=0), init="forward"))
    text = str(info.value)
    assert "cycle a -> b -> a" in text and "mem" in text and "Prop. 3.2" in text
    with pytest.raises(PcgError) as info:
        make_train_step(build(_gen(), seed=0), "train", **b.opts(build(_gen(), seed=0), init="forward"))
    assert "roots not clamped: z" in str(info.value) and "mem" in str(info.value)
    with pytest.raises(PcgError, match="cycle a -> b -> a"):
        make_train_step(build(_loop(), seed=0), "train", **b.opts(build(_loop(), seed=0), init_overrides={"a": "forward"}))
    with pytest.raises(PcgError, match="amortised"):
        make_train_step(build(_gen(), seed=0), "train", **b.opts(build(_gen(), seed=0), init_overrides={"h": "amortised"}))


def test_avg_needs_labels_and_is_training_only():
    with pytest.raises(InitError, match="labels"):
        make_train_step(build(_gen(), seed=0), "train", **b.opts(build(_gen(), seed=0), init="avg"))
    net = build(_mlp(), seed=0)
    # at test avg nodes are forward-initialised (eq. 7 needs labels)
    ev = make_initialiser(net, compile_query(net, "test"), Initialisation("avg"), train=False)
    assert ev.methods["h1"] == ev.methods["h2"] == "forward"
    # on a cyclic graph there is no forward pass to fall back on
    loop = build(_loop(), seed=0)
    with pytest.raises(InitError, match="mem"):
        make_initialiser(loop, compile_query(loop, "test"), Initialisation("avg"), train=False)
    with pytest.raises(InitError, match="unknown init option"):
        make_train_step(net, "train", **b.opts(net, init_options={"mem_patern": 3}))


def test_hybrid_avg_forward_for_first_m_layers():
    net = build(b.mlp([4, 5, 5, 5, 5, 3]), seed=0)
    step = make_train_step(net, "train", **b.opts(net, init="avg", init_options={"avg_hybrid": True}))
    # L = 5 weight layers -> m = 3: h1..h3 forward, h4 avg
    assert [step.initialiser.methods[f"h{i}"] for i in range(1, 5)] == \
        ["forward", "forward", "forward", "avg"]
    assert step.initialiser.label == "y"
    step = make_train_step(net, "train", **b.opts(net, init="avg", init_options={"avg_m": 1}))
    assert [step.initialiser.methods[f"h{i}"] for i in range(1, 5)] == \
        ["forward", "avg", "avg", "avg"]


# ------------------------------------------------------------------------------ SMM, jit
def test_smm_per_step_includes_the_initialisation():
    net = build(b.mlp([4, 5, 5, 5, 5, 3]), seed=0)  # L = 5
    assert make_train_step(net, "train", **b.opts(net, steps=5)).smm["smm_pc"] == 2 * 5 + 5
    assert make_train_step(net, "train", **b.opts(net, steps=5, init="zero")).smm["smm_pc"] == 10
    assert make_train_step(net, "train", **b.opts(net, steps=5, init="mem")).smm["smm_pc"] == 12
    assert make_train_step(net, "train", **b.opts(net, steps=5, init="avg")).smm["smm_pc"] == 10
    assert make_train_step(net, "train", method="bp").smm["smm_bp"] == 9
    ipc = make_train_step(net, "train", method="ipc", **b.opts(net, steps=5))
    assert ipc.smm["smm_per_update"] == 15 / 5


@pytest.mark.parametrize("model,init,batch", [
    (_mlp, "null", {"x": 0, "y": 1}), (_mlp, "avg", {"x": 0, "y": 1}),
    (_loop, "mem", {"img": 0, "label": 1}), (_hybrid, None, {"img": 0})])
def test_stateful_step_traces_once(model, init, batch):
    net = build(model(), seed=0)
    step = make_train_step(net, "train", **b.opts(net, steps=3, init=init))
    assert step.stateful
    state = step.init(net, batch_size=6)
    assert isinstance(state, StepState)
    for s in range(3):
        X, y = _data(6, seed=s)
        data = {k: (X if v == 0 else y) for k, v in batch.items()}
        net, state, _ = step(net, state, data, jax.random.PRNGKey(s))
    assert step.traces == 1 and int(state.carry.batches) == 3
    with pytest.raises(InitError, match="carr"):
        step(net, state.opt_state, data)


# ------------------------------------------------------------------------------ checkpoints
def test_fit_carries_state_checkpoint_round_trip_and_exact_resume(tmp_path):
    from pcgraph import data as D
    from pcgraph._checkpoint import load, save
    from pcgraph import fit, fresh_carry

    ds = D.load("digits")
    model = b.model(
        "loop", [b.node("img", 64), b.node("a", 16, act="tanh"), b.node("b", 16, act="tanh"),
                 b.node("label", 10)],
        [b.edge("img", "a"), b.edge("a", "b"), b.edge("b", "label"), b.edge("b", "a")],
        [b.query("train", ("img", "label")), b.query("test", ("img",), ("label",))])
    kw = dict(batch_size=128, steps=3, seed=1, trace_inference=False, train_eval_max=128,
              init_options={"mem_patterns": 8})
    full = fit(build(model, seed=1), ds, epochs=2, **kw)
    assert full.traces == 1 and full.smm_per_update == 2 * 3 + 2
    assert full.final["test_accuracy"] > 0.2
    half = fit(build(model, seed=1), ds, epochs=1, **kw)
    path = save(tmp_path / "ck.eqx", half.net, half.state.opt_state, half.state.carry,
                half.state.meta())
    like = fresh_carry(build(model, seed=1), batch_size=128, seed=1,
                       init=Initialisation(options={"mem_patterns": 8}))
    net, opt_state, carry, meta = load(path, build(model, seed=1), half.state.opt_state, like)
    for x, y in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(half.state.carry)):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    from pcgraph import TrainState

    resumed = fit(net, ds, epochs=2, state=TrainState.from_meta(opt_state, carry, meta), **kw)
    for x, y in zip(jax.tree_util.tree_leaves((resumed.net, resumed.state.carry)),
                    jax.tree_util.tree_leaves((full.net, full.state.carry))):
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_memories_need_their_observations_clamped():
    """A decoder's memories read the image: a query clamping only z cannot use them (a clear
    InitError), and the example model's generate query initialises forward instead."""
    import pcgraph

    text = (Path(__file__).resolve().parent.parent / "models" / "decoder.pcg").read_text()
    small = text.replace("[256]", "[16]").replace("[64]", "[8]")
    bare = small.replace("; init h1 = forward; init h2 = forward", "")
    x = np.random.default_rng(0).uniform(size=(16, 784)).astype(np.float32)
    z = {"z": np.zeros((4, 8), np.float32)}
    for src, ok in ((bare, False), (small, True)):
        net = pcgraph.build(pcgraph.load(src), seed=0)
        res = pcgraph.fit(net, {"img": x}, epochs=1, batch_size=8, eval_data=False)
        step = pcgraph.make_eval_step(res.net, "generate")
        if ok:
            out = step(res.net, z, carry=res.state.carry)
            assert out["img"].shape == (4, 784) and np.all(np.isfinite(out["img"]))
        else:
            with pytest.raises(pcgraph.InitError, match="trained on observations img"):
                step(res.net, z, carry=res.state.carry)
