"""The bernoulli, laplace and learned-precision gaussian energies: against hand-written energies
(value and every gradient, float64), finite differences, the language (validator, fmt) and the
learned variances of data with known per-dimension noise."""

import _build as b
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pcgraph import (
    GradientDescent,
    PcgError,
    build,
    compile_query,
    energy,
    fit,
    format_model,
    infer,
    load,
    predictions,
)

TOL = 1e-10


def _rand(seed, shape, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape))


def _mixed(prec="learned_diagonal"):
    """z -> {g, ber, lap}: one node of each new energy (g: act tanh)."""
    nodes = [b.node("z", 3), b.node("g", 4, act="tanh", precision=prec),
             b.node("ber", 5, energy="bernoulli"), b.node("lap", 2, energy="laplace", scale=0.5)]
    edges = [b.edge("z", "g"), b.edge("z", "ber"), b.edge("z", "lap")]
    return b.model("mixed", nodes, edges, [b.query("train", ("g", "ber", "lap"))])


def _reference(vals, params, lp):
    """F by hand: ½Σ(π ε² − log π) + Σ softplus(a) − x·a + Σ|ε|/0.5, mean over the batch."""
    z = vals["z"]
    pre = {k: z @ params[k][0]["W"] + params[k][0]["b"] for k in ("z->g", "z->ber", "z->lap")}
    eps_g = vals["g"] - jnp.tanh(pre["z->g"])
    lpb = jnp.broadcast_to(lp, eps_g.shape)
    e_g = 0.5 * jnp.sum(jnp.exp(lpb) * eps_g**2 - lpb)
    a = pre["z->ber"]
    e_b = jnp.sum(jnp.log1p(jnp.exp(a)) - vals["ber"] * a)
    e_l = jnp.sum(jnp.abs(vals["lap"] - pre["z->lap"])) / 0.5
    return (e_g + e_b + e_l) / z.shape[0]


@pytest.mark.parametrize("prec", ["learned", "learned_diagonal"])
def test_energies_match_hand_written(x64, prec):
    net = build(_mixed(prec), seed=1)
    B = 6
    vals = {"z": _rand(0, (B, 3)), "g": _rand(1, (B, 4)), "lap": _rand(2, (B, 2)),
            "ber": jnp.asarray(np.random.default_rng(3).integers(0, 2, (B, 5)), float)}
    gi = net.plan.loc["g"][0]
    lp = _rand(4, (4,) if prec == "learned_diagonal" else (), 0.5)
    pre_list = list(net.precisions)
    pre_list[gi] = lp[None] if lp.ndim else lp.reshape(1)
    net = eqx.tree_at(lambda n: n.precisions, net, tuple(pre_list))
    names = net.term_names()
    params = {n: net.term_params(n) for n in names}

    def ours(vals, params, lp):
        n = net
        for k, p in params.items():
            n = n.with_term_params(k, p)
        pl = list(n.precisions)
        pl[gi] = lp[None] if lp.ndim else lp.reshape(1)
        n = eqx.tree_at(lambda m: m.precisions, n, tuple(pl))
        return energy(n, n.pack(vals))

    e, g = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2)))(vals, params, lp)
    e_ref, g_ref = jax.jit(jax.value_and_grad(_reference, argnums=(0, 1, 2)))(vals, params, lp)
    ours = jax.jit(ours)
    assert abs(float(e) - float(e_ref)) < TOL
    for a, r in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, r, atol=TOL)
    # the precision gradient by central finite differences as well
    d = 1e-6
    for i in range(lp.size):
        u = jnp.zeros(lp.size).at[i].set(d).reshape(lp.shape)
        fd = (ours(vals, params, lp + u) - ours(vals, params, lp - u)) / (2 * d)
        assert abs(float(fd) - float(g[2].reshape(-1)[i])) < 1e-6
    # predictions: sigmoid of the logits for bernoulli
    mu = predictions(net, net.pack(vals))
    pre_b = vals["z"] @ params["z->ber"][0]["W"] + params["z->ber"][0]["b"]
    np.testing.assert_allclose(mu["ber"], jax.nn.sigmoid(pre_b), atol=TOL)


def test_learned_precision_weights_inference(x64):
    """z -> x1, z -> x2 (identity), both clamped: the free z settles at the precision-weighted
    mean (π1 x1 + π2 x2) / (π1 + π2)."""
    ident = b.term(b.tr("identity"), bias=False)
    m = b.model("w", [b.node("z", 3), b.node("x1", 3, precision="learned_diagonal"),
                      b.node("x2", 3, precision="learned")],
                [b.edge("z", "x1", ident), b.edge("z", "x2", ident)],
                [b.query("q", ("x1", "x2"))])
    net = build(m)
    p1, p2 = jnp.asarray([4.0, 1.0, 0.25]), 2.0
    pl = list(net.precisions)
    pl[net.plan.loc["x1"][0]] = jnp.log(p1)[None]
    pl[net.plan.loc["x2"][0]] = jnp.log(jnp.asarray([p2]))
    net = eqx.tree_at(lambda n: n.precisions, net, tuple(pl))
    q = compile_query(net, "q")
    x1, x2 = _rand(0, (2, 3)), _rand(1, (2, 3))
    res = eqx.filter_jit(infer)(net, q, net.pack({"x1": x1, "x2": x2}),
                                GradientDescent(steps=400, optimizer=optax.sgd(0.1)))
    want = (p1 * x1 + p2 * x2) / (p1 + p2)
    np.testing.assert_allclose(net.get(res.h, "z"), want, atol=1e-8)
    assert set(net.learned_precisions()) == {"x1", "x2"}


def test_learned_variances_recover_the_noise():
    """x = A z + noise with a known std per dimension, z and x clamped: the learned diagonal
    precision's variances 1/π come within 5 % of the true noise variances."""
    rng = np.random.default_rng(0)
    N, sd = 8192, np.array([0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    z = rng.standard_normal((N, 3)).astype(np.float32)
    A = rng.standard_normal((3, 6)).astype(np.float32)
    x = (z @ A + rng.standard_normal((N, 6)) * sd).astype(np.float32)
    m = b.model("noise", [b.node("z", 3), b.node("x", 6, precision="learned_diagonal")],
                [b.edge("z", "x")], [b.query("train", ("z", "x"))],
                steps=0, weight_lr=0.03, batch_size=256, epochs=25)
    net = build(m)
    res = fit(net, {"z": z, "x": x}, eval_data=False, trace_inference=False)
    var = 1.0 / np.asarray(res.net.learned_precisions()["x"])
    np.testing.assert_array_less(np.abs(var / sd**2 - 1), 0.05)


def test_precision_optimizer_routes_the_precisions():
    """With its own learning rate the precision reaches the noise level in a few hundred steps
    at a weight learning rate where the shared optimiser leaves it near its start."""
    import optax

    from pcgraph import precision_optimizer

    rng = np.random.default_rng(2)
    z = rng.standard_normal((4096, 2)).astype(np.float32)
    x = (z @ rng.standard_normal((2, 4)) + 0.05 * rng.standard_normal((4096, 4))).astype(
        np.float32)
    m = b.model("noise", [b.node("z", 2), b.node("x", 4, precision="learned_diagonal")],
                [b.edge("z", "x")], [b.query("train", ("z", "x"))],
                steps=0, weight_lr=1e-2, batch_size=64, epochs=8)
    shared = fit(build(m), {"z": z, "x": x}, eval_data=False, trace_inference=False)
    routed = fit(build(m), {"z": z, "x": x}, eval_data=False, trace_inference=False,
                 weight_optimizer=precision_optimizer(optax.adam(1e-2), optax.adam(0.05)))
    # Adam moves log π by about its rate per step: 512 steps at 1e-2 reach at most e^5.12 ≈ 167
    assert np.all(np.asarray(shared.net.learned_precisions()["x"]) < 170.0)  # truth: 400
    var = 1.0 / np.asarray(routed.net.learned_precisions()["x"])
    np.testing.assert_array_less(np.abs(var / 0.05**2 - 1), 0.15)  # measured: 3-9 %


def test_learned_scalar_precision_recovers_the_noise():
    rng = np.random.default_rng(1)
    N = 8192
    z = rng.standard_normal((N, 2)).astype(np.float32)
    x = (z @ rng.standard_normal((2, 5)) + 0.4 * rng.standard_normal((N, 5))).astype(np.float32)
    m = b.model("noise", [b.node("z", 2), b.node("x", 5, precision="learned")],
                [b.edge("z", "x")], [b.query("train", ("z", "x"))],
                steps=0, weight_lr=0.03, batch_size=256, epochs=25)
    res = fit(build(m), {"z": z, "x": x}, eval_data=False, trace_inference=False)
    var = 1.0 / float(res.net.learned_precisions()["x"])
    assert abs(var / 0.16 - 1) < 0.05


# ------------------------------------------------------------------------------ the language
SRC = """model m {
  node z: [3]
  node g: [4] energy = gaussian(precision = learned_diagonal)
  node s: [4] energy = gaussian(precision = learned)
  node ber: [5] energy = bernoulli
  node lap: [2] energy = laplace(scale = 0.5)
  z -> g : dense
  z -> s : dense
  z -> ber : dense
  z -> lap : dense
  query train { clamp g, s, ber, lap }
}
"""


def test_language_round_trip():
    m = load(SRC)
    kinds = {n.name: (n.energy.kind, n.energy.precision, n.energy.scale) for n in m.nodes}
    assert kinds["g"] == ("gaussian", "learned_diagonal", 1.0)
    assert kinds["s"] == ("gaussian", "learned", 1.0)
    assert kinds["ber"][0] == "bernoulli"
    assert kinds["lap"] == ("laplace", 1.0, 0.5)
    text = format_model(m)
    assert "energy = gaussian(precision = learned_diagonal)" in text
    assert "energy = laplace(scale = 0.5)" in text
    assert load(text) == m


@pytest.mark.parametrize("old,new,code,msg", [
    ("gaussian(precision = learned)", "gaussian(precision = lerned)", "bad-value",
     ("4:24: error: gaussian: precision must be a number or one of learned, learned_diagonal, "
      "got 'lerned'")),
    ("gaussian(precision = learned)", "gaussian(precision = -2)", "bad-precision",
     "precision must be a positive number or one of learned, learned_diagonal, got -2"),
    ("laplace(scale = 0.5)", "laplace(scale = -1)", "bad-scale",
     "the laplace scale must be a positive number, got -1"),
    ("laplace(scale = 0.5)", "laplace(precision = 2)", None, "laplace has no argument 'precision'"),
    ("[5] energy = bernoulli", "[5] act = sigmoid energy = bernoulli", "bernoulli-act",
     "act = sigmoid would be applied twice"),
    ("z -> ber : dense", "z -> ber : dense\n  ber -> lap : dense", "bernoulli-not-leaf",
     "node 'ber' has bernoulli energy but predicts other nodes (lap)"),
])
def test_language_errors(old, new, code, msg):
    assert old in SRC
    with pytest.raises(PcgError) as err:
        load(SRC.replace(old, new, 1))
    assert msg in str(err.value)
    if code:
        assert code in {d.code for d in err.value.diagnostics}


def test_named_params_carry_the_learned_precisions():
    """``named_params`` holds each learned log-precision by node name, whatever the stacking, and
    ``load_named_params`` restores them (and asks for them)."""
    m = b.model("np", [b.node("z", 3), b.node("x1", 3, precision="learned_diagonal"),
                       b.node("x2", 3, precision="learned"), b.node("x3", 3, precision="learned"),
                       b.node("y", 3)],
                [b.edge("z", "x1"), b.edge("z", "x2"), b.edge("z", "x3"), b.edge("z", "y")],
                [b.query("q", ("x1", "x2", "x3", "y"))])
    src = build(m, seed=0, stack=True)
    pl = [None if lp is None else _rand(i, lp.shape) for i, lp in enumerate(src.precisions)]
    src = eqx.tree_at(lambda n: n.precisions, src, tuple(pl))
    named = src.named_params()
    want = {n: np.log(np.asarray(p)) for n, p in src.learned_precisions().items()}
    assert set(want) == {"x1", "x2", "x3"} and set(want) <= set(named)
    assert named["x1"][0]["log_precision"].shape == (3,) and named["x2"][0]["log_precision"].shape == ()
    for n, v in want.items():
        np.testing.assert_allclose(named[n][0]["log_precision"], v, rtol=1e-6)
    dst = build(m, seed=1, stack=False).load_named_params(named)
    for n, v in want.items():
        np.testing.assert_allclose(np.log(np.asarray(dst.learned_precisions()[n])), v, rtol=1e-6)
    np.testing.assert_array_equal(dst.term_params("z->y")[0]["W"], src.term_params("z->y")[0]["W"])
    with pytest.raises(KeyError, match="x2"):
        build(m).load_named_params({k: v for k, v in named.items() if k != "x2"})
