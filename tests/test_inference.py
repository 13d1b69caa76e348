"""Inference reaches the closed-form equilibrium of linear graphs (discriminative, cyclic,
generative), with GD in a scan and with diffrax; options (early stop, optax, recording, masks)."""

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _build as b
from pcgraph import (
    energy, linear_equilibrium, GradientDescent, GradientFlow, Initialisation, infer, relax,
)
from pcgraph._infer import clamp_data
from pcgraph import build, compile_query

E = eqx.filter_jit(energy)
_infer = eqx.filter_jit(infer)


def INFER(net, q, h0, *, steps, lr=0.1, optimizer=None, record_activities=False, **kw):
    """Gradient descent with plain SGD at ``lr`` (or ``optimizer``)."""
    gd = GradientDescent(steps, optimizer or optax.sgd(lr), **kw)
    return _infer(net, q, h0, gd, record=record_activities)


def INFER_ODE(net, q, h0, *, solver, adaptive=False, rtol=1e-3, atol=1e-6, **kw):
    """A gradient flow with the named diffrax solver."""
    ctrl = diffrax.PIDController(rtol=rtol, atol=atol) if adaptive else diffrax.ConstantStepSize()
    solvers = {"euler": diffrax.Euler, "heun": diffrax.Heun, "tsit5": diffrax.Tsit5}
    return _infer(net, q, h0, GradientFlow(solvers[solver](), stepsize_controller=ctrl, **kw))


def _np(key, shape):
    return np.random.default_rng(key).standard_normal(shape)


def linear_chain():
    return b.model(
        "lin", [b.node("x", 4), b.node("h1", 5), b.node("h2", 5), b.node("y", 3)],
        [b.edge("x", "h1"), b.edge("h1", "h2"), b.edge("h2", "y")],
        [b.query("train", ("x", "y"))])


def linear_cycle():
    return b.model(
        "cyc", [b.node("img", 4), b.node("a", 3), b.node("b", 3), b.node("label", 2)],
        [b.edge("img", "a"), b.edge("a", "b"), b.edge("b", "label"), b.edge("b", "a")],
        [b.query("train", ("img", "label"))])


def linear_generative():
    return b.model(
        "gen", [b.node("z", 2, prior=(0.5, 2.0)), b.node("h", 4), b.node("img", 6, precision=2.0)],
        [b.edge("z", "h"), b.edge("h", "img")],
        [b.query("train", ("img",))])


CASES = {
    "chain": (linear_chain, ("h1", "h2")),
    "cycle": (linear_cycle, ("a", "b")),
    "generative": (linear_generative, ("z", "h")),
}


def _setup(case, B=3):
    make, free = CASES[case]
    m = make()
    net = build(m, seed=11)
    q = compile_query(net, "train")
    data = {n: jnp.asarray(_np(i, (B, *net.node_shape(n)))) for i, n in enumerate(q.clamp)}
    A, bb, c = b.linear_system_by_hand(net, free, {k: np.asarray(v) for k, v in data.items()})
    xs = np.linalg.solve(A, bb.T).T  # [B, n]
    F_star = float(np.mean(c - 0.5 * np.sum(bb * xs, axis=1)))
    dims = [int(np.prod(net.node_shape(n))) for n in free]
    split = np.split(xs, np.cumsum(dims)[:-1], axis=1)
    h_star = dict(zip(free, split))
    return net, q, data, A, h_star, F_star


@pytest.mark.parametrize("case", list(CASES))
def test_gd_reaches_closed_form(x64, case):
    net, q, data, A, h_star, F_star = _setup(case)
    lam = np.linalg.eigvalsh(A)  # per-sample Hessian (the "sample" gradient convention)
    assert lam[0] > 0.005 * lam[-1]
    h0 = clamp_data(net, q, data)
    r = INFER(net, q, h0, steps=6000, lr=1.0 / lam[-1])
    out = net.unpack(r.h)
    for n, v in h_star.items():
        np.testing.assert_allclose(out[n], v, atol=1e-6)
    assert float(E(net, r.h, q)) == pytest.approx(F_star, abs=1e-10)
    # clamped values are untouched
    for n, v in data.items():
        np.testing.assert_array_equal(out[n], v)
    # the theory module agrees with the independent construction
    hs, Fs = linear_equilibrium(net, q, h0)
    for n, v in h_star.items():
        np.testing.assert_allclose(net.unpack(hs)[n], v, atol=1e-10)
    assert float(Fs) == pytest.approx(F_star, abs=1e-10)


def test_diffrax_reaches_equilibrium_and_stops(x64):
    # adaptive Tsit5 on the cyclic graph
    net, q, data, A, h_star, F_star = _setup("cycle")
    h0 = clamp_data(net, q, data)
    r = INFER_ODE(net, q, h0, solver="tsit5", adaptive=True, dt=0.1, t1=1e4, max_steps=4096,
                  rtol=1e-8, atol=1e-10, ss_atol=1e-8, ss_rtol=0.0)
    # the steady-state threshold must sit above the controller's noise floor (~rtol·‖h‖·λ)
    assert bool(r.converged)
    assert int(r.steps) < 4096
    assert float(r.grad_norm) < 1e-8
    for n, v in h_star.items():
        np.testing.assert_allclose(net.unpack(r.h)[n], v, atol=1e-6)
    assert float(E(net, r.h, q)) == pytest.approx(F_star, abs=1e-10)
    # Heun with constant steps on the generative graph: the event fires too
    net, q, data, A, h_star, F_star = _setup("generative")
    h0 = clamp_data(net, q, data)
    lam = np.linalg.eigvalsh(A)
    r2 = INFER_ODE(net, q, h0, solver="heun", dt=float(1.0 / lam[-1]), t1=1e5, ss_atol=1e-9,
                   ss_rtol=0.0)
    n_cap = int(np.ceil(1e5 * lam[-1])) + 1
    assert bool(r2.converged) and int(r2.steps) < n_cap
    for n, v in h_star.items():
        np.testing.assert_allclose(net.unpack(r2.h)[n], v, atol=1e-6)
    assert float(E(net, r2.h, q)) == pytest.approx(F_star, abs=1e-10)


def test_euler_equals_gd(x64):
    net, q, data, *_ = _setup("chain")
    h0 = clamp_data(net, q, data)
    r_gd = INFER(net, q, h0, steps=25, lr=0.05)
    r_ode = INFER_ODE(net, q, h0, solver="euler", dt=0.05, steps=25, steady_state=False)
    assert int(r_ode.steps) == 25
    for a, c in zip(r_gd.h, r_ode.h):
        np.testing.assert_allclose(a, c, atol=1e-12)


def test_early_stop_and_recording(x64):
    net, q, data, A, h_star, _ = _setup("chain")
    h0 = clamp_data(net, q, data)
    lr = 1.0 / np.linalg.eigvalsh(A)[-1]
    r = INFER(net, q, h0, steps=100000, lr=lr, tol=1e-9)
    assert bool(r.converged) and int(r.steps) < 100000 and float(r.grad_norm) < 1e-9
    assert np.isnan(np.asarray(r.energies)[int(r.steps) + 1:]).all()
    # recording: energies never increase for a small step; trajectory per step
    r2 = INFER(net, q, h0, steps=30, lr=lr, record_activities=True)
    e = np.asarray(r2.energies)
    assert e.shape == (30,) and np.all(np.diff(e) <= 1e-14)
    assert len(r2.trajectory) == len(q.free_groups)  # per free node group
    for traj, g in zip(r2.trajectory, q.free_groups):
        assert traj.shape == (30, *r2.h[g].shape)
        np.testing.assert_allclose(traj[-1], r2.h[g])
    # frozen scan when recording with a tolerance
    r3 = INFER(net, q, h0, steps=4000, lr=lr, tol=1e-7, record_activities=True)
    assert bool(r3.converged) and int(r3.steps) < 4000


def test_activity_scale_and_optax(x64):
    net, q, data, A, h_star, _ = _setup("chain", B=4)
    h0 = clamp_data(net, q, data)
    r_s = INFER(net, q, h0, steps=20, lr=0.05)
    r_b = INFER(net, q, h0, steps=20, lr=0.05 * 4, activity_scale="batch")
    for a, c in zip(r_s.h, r_b.h):
        np.testing.assert_allclose(a, c, atol=1e-12)
    import optax

    r = INFER(net, q, h0, steps=3000, optimizer=optax.adam(0.01))
    for n, v in h_star.items():
        np.testing.assert_allclose(net.unpack(r.h)[n], v, atol=1e-4)


def test_partly_clamped_group(x64):
    m = b.chain(["x", "h1", "h2", "h3", "y"], [3, 4, 4, 4, 2])
    net = build(m, seed=2, stack=True)
    assert ("h1", "h2", "h3") in net.plan.layout
    q = compile_query(net, {"clamp": ["x", "h2", "y"]})
    data = {n: jnp.asarray(_np(i, (2, *net.node_shape(n)))) for i, n in enumerate(q.clamp)}
    h0 = clamp_data(net, q, data)
    A, bb, c = b.linear_system_by_hand(net, ("h1", "h3"), {k: np.asarray(v) for k, v in data.items()})
    xs = np.linalg.solve(A, bb.T).T
    lam = np.linalg.eigvalsh(A)
    r = INFER(net, q, h0, steps=4000, lr=1.0 / lam[-1])
    out = net.unpack(r.h)
    np.testing.assert_array_equal(out["h2"], data["h2"])
    np.testing.assert_allclose(out["h1"], xs[:, :4], atol=1e-6)
    np.testing.assert_allclose(out["h3"], xs[:, 4:], atol=1e-6)


def test_free_leaf_is_its_prediction(x64):
    m = b.mlp([3, 4, 4, 2], act="tanh", out_energy="categorical")
    net = build(m, seed=3)
    r = relax(net, "test", {"x": jnp.asarray(_np(0, (5, 3)))}, GradientDescent(5, optax.sgd(0.1)),
              init=Initialisation("zero"))
    y = net.get(r.h, "y")
    np.testing.assert_allclose(np.asarray(y).sum(axis=1), 1.0, atol=1e-12)  # probabilities
    p = net.term_params("h2->y")[0]
    np.testing.assert_allclose(y, jax.nn.softmax(net.get(r.h, "h2") @ p["W"] + p["b"]), atol=1e-12)
