"""Training steps: PC, iPC and BP each train a small model; no retracing; deep residual nets;
generative and cyclic models train end to end; the evaluation step."""

import numpy as np
import optax
import pytest

import _build as b
from pcgraph import make_eval_step, make_train_step, build


def _data(n=64, d=8, c=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(np.float32)
    W = rng.standard_normal((d, c))
    y = np.argmax(X @ W, axis=1)
    return X, y


_STEPS: dict = {}  # compiled steps shared by the tests of this module (one compile each)


def _step(method):
    if method not in _STEPS:
        m = b.mlp([8, 16, 16, 4], act="tanh", out_energy="categorical")
        net = build(m, seed=1)
        _STEPS[method] = make_train_step(net, "train", method=method, weight_optimizer=optax.adam(1e-2), **b.opts(net, steps=8, activity_lr=0.1))
        _STEPS[method].net0 = net
        if "eval" not in _STEPS:
            _STEPS["eval"] = make_eval_step(net, "test")
    return _STEPS[method]


def _train(method, steps=60):
    step = _step(method)
    net = step.net0
    X, y = _data()
    state = step.init(net)
    losses = []
    for i in range(steps):
        sl = slice((i % 2) * 32, (i % 2) * 32 + 32)  # two alternating batches
        net, state, met = step(net, state, {"x": X[sl], "y": y[sl]})
        losses.append(float(met["loss"]))
    assert step.traces == 1  # no retracing between batches
    return net, losses, step


@pytest.mark.parametrize("method,factor", [("pc", 3.0), ("ipc", 3.0), ("bp", 3.0)])
def test_methods_train(method, factor):
    net, losses, _ = _train(method)
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    assert last < first / factor, (method, first, last)
    ev = _STEPS["eval"]
    X, y = _data()
    out = ev(net, {"x": X})["y"]
    np.testing.assert_allclose(np.asarray(out).sum(1), 1.0, atol=1e-5)
    assert np.mean(np.argmax(out, 1) == y) > 0.8
    assert ev.direct and ev.traces == 1  # one compile for every method's network


def test_pc_metrics_and_bp_loss_agree():
    pc, bp = _step("pc"), _step("bp")
    net = pc.net0
    X, y = _data(32)
    _, _, mp = pc(net, pc.init(net), {"x": X, "y": y})
    _, _, mb = bp(net, bp.init(net), {"x": X, "y": y})
    # forward init (auto on a DAG with its root clamped): F(t=0) is the output loss = BP's loss
    assert float(mp["energy_start"]) == pytest.approx(float(mp["loss"]), rel=1e-6)
    assert float(mp["loss"]) == pytest.approx(float(mb["loss"]), rel=1e-6)
    assert float(mp["energy_end"]) < float(mp["energy_start"])


def test_residual_128_trains():
    m = b.resnet(128, 8, 6, 3, steps=4, activity_lr=0.5)
    net = build(m)
    assert len(net.plan.terms) == 4
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((4, 6)).astype(np.float32),
             "y": rng.standard_normal((4, 3)).astype(np.float32)}
    step = make_train_step(net, "train", weight_optimizer=optax.adam(1e-2))
    state = step.init(net)
    for _ in range(2):
        net, state, met = step(net, state, batch)
    assert step.traces == 1
    assert np.isfinite(float(met["energy_end"]))
    assert float(met["energy_end"]) <= float(met["energy_start"])


def test_generative_trains():
    m = b.model(
        "gen", [b.node("z", 3), b.node("h", 8, act="tanh"), b.node("img", 12)],
        [b.edge("z", "h"), b.edge("h", "img")], [b.query("train", ("img",))])
    net = build(m, seed=3)
    rng = np.random.default_rng(1)
    img = (rng.standard_normal((32, 3)) @ rng.standard_normal((3, 12))).astype(np.float32)
    step = make_train_step(net, "train", weight_optimizer=optax.adam(1e-2), **b.opts(net, steps=20, activity_lr=0.1))
    state = step.init(net)
    ends = []
    for _ in range(40):
        net, state, met = step(net, state, {"img": img})
        ends.append(float(met["energy_end"]))
    assert ends[-1] < ends[0] / 2


def test_cyclic_trains_and_evaluates():
    m = b.model(
        "loop",
        [b.node("img", 8), b.node("a", 12, act="tanh"), b.node("b", 12, act="tanh"),
         b.node("label", 4, energy="categorical")],
        [b.edge("img", "a"), b.edge("a", "b"), b.edge("b", "label"), b.edge("b", "a")],
        [b.query("train", ("img", "label")), b.query("test", ("img",), ("label",))],
        steps=10, activity_lr=0.2)
    net = build(m, seed=4)
    X, y = _data(32, d=8, c=4, seed=5)
    step = make_train_step(net, "train", weight_optimizer=optax.adam(1e-2))
    state = step.init(net)
    ends = []
    for _ in range(40):
        net, state, met = step(net, state, {"img": X, "label": y})
        ends.append(float(met["loss_end"]))
    assert ends[-1] < ends[0] / 2
    ev = make_eval_step(net, "test")  # no forward pass exists: runs inference
    assert not ev.direct
    out = ev(net, {"img": X}, carry=state)["label"]  # a and b: retrieval from the trained memories
    np.testing.assert_allclose(np.asarray(out).sum(1), 1.0, atol=1e-5)
    assert np.mean(np.argmax(out, 1) == y) > 0.5


def test_ode_solver_in_train_step_and_eval_no_retrace():
    m = b.mlp([8, 16, 4], act="tanh", out_energy="categorical")
    net = build(m, seed=6)
    X, y = _data(32)
    step = make_train_step(net, "train", record_node_energies=True, **b.opts(net, solver="heun", steps=5, activity_lr=0.1))
    state = step.init(net)
    net, state, met = step(net, state, {"x": X, "y": y})
    assert set(met["node_energies"]) == {"h1", "y"}
    assert float(met["energy_end"]) < float(met["energy_start"])
    ev = make_eval_step(net, "test")
    assert ev.direct  # a DAG with its root clamped: the forward pass is the equilibrium
    for s in range(3):
        ev(net, {"x": X + s})
    assert ev.traces == 1
