"""Theory tools: the activity Hessian, linear closed forms, the deep-linear-chain formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import _build as b
from pcgraph._infer import clamp_data
from pcgraph import build, compile_query, activity_hessian, condition_number, linear_equilibrium
from pcgraph._theory import check_linear, energy_of_vector, linear_system


def test_deep_linear_chain_rescaled_mse(x64):
    """F* = (1/2B) Σ_i r_iᵀ S⁻¹ r_i, r = y − ŷ, S = I + Σ_l P_l P_lᵀ (DESIGN §5, seed 001)."""
    sizes = [3, 4, 4, 4, 2]
    names = ["x", "h1", "h2", "h3", "y"]
    m = b.chain(names, sizes, bias=False, queries=[b.query("train", ("x", "y"))])
    net = build(m, seed=5)
    B = 4
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((B, 3)), rng.standard_normal((B, 2))
    q = compile_query(net, "train")
    _, F_star = linear_equilibrium(net, q, clamp_data(net, q, {"x": x, "y": y}))
    # column form: h_l = M_l h_{l-1} with M_l = W_lᵀ
    Ms = [np.asarray(net.term_params(f"{u}->{v}")[0]["W"]).T for u, v in zip(names, names[1:])]
    yhat = x @ np.linalg.multi_dot(Ms[::-1]).T
    S = np.eye(2)
    for l in range(1, len(Ms)):  # hidden layer l: P_l = M_L ... M_{l+1}
        P = np.linalg.multi_dot(Ms[l:][::-1]) if len(Ms[l:]) > 1 else Ms[l]
        S += P @ P.T
    r = y - yhat
    want = np.sum(r * np.linalg.solve(S, r.T).T) / (2 * B)
    assert float(F_star) == pytest.approx(want, abs=1e-12)


def test_hessian_is_the_quadratic_form_and_condition_number(x64):
    m = b.model(
        "cyc", [b.node("img", 4), b.node("a", 3), b.node("b", 3), b.node("label", 2)],
        [b.edge("img", "a"), b.edge("a", "b"), b.edge("b", "label"), b.edge("b", "a")],
        [b.query("train", ("img", "label"))])
    net = build(m, seed=1)
    q = compile_query(net, "train")
    rng = np.random.default_rng(1)
    h = clamp_data(net, q, {"img": rng.standard_normal((2, 4)), "label": rng.standard_normal((2, 2))})
    A, bb, c = linear_system(net, q, h)
    H = activity_hessian(net, q, h)
    assert H.shape == (2 * 6, 2 * 6)  # batch 2 × (a, b)
    np.testing.assert_allclose(H, A, atol=1e-12)
    np.testing.assert_allclose(H, H.T, atol=1e-12)
    lam = np.linalg.eigvalsh(np.asarray(H))
    assert float(condition_number(H)) == pytest.approx(lam[-1] / lam[0], rel=1e-9)
    # the quadratic form reproduces F anywhere
    f, x0 = energy_of_vector(net, q, h)
    z = jnp.asarray(rng.standard_normal(x0.shape))
    assert float(f(z)) == pytest.approx(float(0.5 * z @ A @ z - bb @ z + c), abs=1e-12)


def test_nonlinear_hessian_matches_finite_differences(x64):
    m = b.mlp([3, 4, 4, 2], act="tanh")
    net = build(m, seed=2)
    q = compile_query(net, "train")
    rng = np.random.default_rng(2)
    h = clamp_data(net, q, {"x": rng.standard_normal((2, 3)), "y": rng.standard_normal((2, 2))})
    h = tuple(a + 0.3 * rng.standard_normal(a.shape) for a in h)
    H = activity_hessian(net, q, h)
    f, x0 = energy_of_vector(net, q, h)
    g = jax.jit(jax.grad(f))
    d = jnp.asarray(rng.standard_normal(x0.shape))
    eps = 1e-6
    fd = (g(x0 + eps * d) - g(x0 - eps * d)) / (2 * eps)
    np.testing.assert_allclose(H @ d, fd, atol=1e-7)
    with pytest.raises(ValueError, match="not a linear graph"):
        check_linear(net)
