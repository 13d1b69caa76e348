"""The energy against hand-written references (float64, to 1e-10), finite differences, the forward
pass and its properties."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import _build as b
from pcgraph import ForwardError, energy, node_energies, predictions
from pcgraph._energy import forward
from pcgraph import GradientDescent, Initialisation, infer, initialise
from pcgraph._infer import clamp_data
from pcgraph import build, compile_query

TOL = 1e-10
E = eqx.filter_jit(energy)  # jitted: eager op-by-op dispatch compiles every primitive


def _rand(key, shape, scale=1.0):
    """Test data from numpy (eager jax.random compiles once per shape)."""
    return jnp.asarray(scale * np.random.default_rng(key).standard_normal(shape))


def _random_acts(net, B, seed=0):
    return {n: _rand(seed + i, (B, *net.node_shape(n))) for i, n in enumerate(net.node_names)}


def _W(net, name, j=0):
    p = net.term_params(name)[j]
    return p["W"], p.get("b")


def _with_params(net, params):
    """Replace every term's parameters (dict name -> tuple of dicts)."""
    for name, p in params.items():
        net = net.with_term_params(name, p)
    return net


def _check_grads(net, vals, ref_fn, query=None):
    """Energy and its gradients (activities and parameters) equal the reference."""
    h = net.pack(vals)
    names = net.term_names()
    params = {n: net.term_params(n) for n in names}

    def ours(vals, params):
        return energy(_with_params(net, params), net.pack(vals), query)

    # one compiled program each: value and every gradient
    e, g = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(vals, params)
    e_ref, g_ref = jax.jit(jax.value_and_grad(ref_fn, argnums=(0, 1)))(vals, params)
    assert abs(float(e) - float(e_ref)) < TOL * max(1.0, abs(float(e_ref)))
    for a, r in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(g_ref)):
        np.testing.assert_allclose(a, r, atol=TOL, rtol=1e-9)
    return h


# ------------------------------------------------------------------ seed 004 MLP (act on target)
@pytest.mark.parametrize("out", ["gaussian", "categorical"])
def test_seed004_mlp_energy(x64, out):
    sizes = [6, 7, 7, 7, 4]
    m = b.mlp(sizes, act="sigmoid", out_energy=out)
    net = build(m, seed=1)
    B = 5
    vals = _random_acts(net, B)
    vals["y"] = jax.nn.one_hot(jnp.arange(B) % 4, 4, dtype=jnp.float64) if out == "categorical" else vals["y"]
    names = ["x", "h1", "h2", "h3", "y"]

    def ref(vals, params):
        F = 0.0
        for l in range(1, 5):
            u, v = names[l - 1], names[l]
            p = params[f"{u}->{v}"][0]
            pre = vals[u] @ p["W"] + p["b"]
            if v == "y" and out == "categorical":
                F = F - jnp.sum(vals[v] * jax.nn.log_softmax(pre, axis=-1))
            elif v == "y":
                F = F + 0.5 * jnp.sum((vals[v] - pre) ** 2)
            else:
                F = F + 0.5 * jnp.sum((vals[v] - jax.nn.sigmoid(pre)) ** 2)
        return F / B

    _check_grads(net, vals, ref)
    assert set(node_energies(net, net.pack(vals))) == {"h1", "h2", "h3", "y"}
    assert sum(float(v) for v in node_energies(net, net.pack(vals)).values()) == pytest.approx(
        float(E(net, net.pack(vals))), abs=1e-12)


# ------------------------------------------------------------------ μPC residual (act on source)
def test_mupc_residual_energy(x64):
    D, N, H, C, B = 5, 6, 4, 3, 4
    m = b.resnet(H, N, D, C, pre="relu", bias=False)
    net = build(m, seed=2)
    L = H + 1
    a1, al, aL = 1 / math.sqrt(D), 1 / math.sqrt(N * L), 1 / N
    vals = _random_acts(net, B)

    def ref(vals, params):
        # JPC: z_1 = a_1 W_1 x, z_l = z_{l-1} + a_l W_l φ(z_{l-1}), ŷ = a_L W_L φ(z_{L-1})
        F = 0.5 * jnp.sum((vals["h1"] - a1 * vals["x"] @ params["x->h1"][0]["W"]) ** 2)
        for l in range(2, H + 1):
            z = vals[f"h{l-1}"]
            W = params[f"h{l-1}->h{l}[0]"][0]["W"]
            F = F + 0.5 * jnp.sum((vals[f"h{l}"] - (z + al * jax.nn.relu(z) @ W)) ** 2)
        yhat = aL * jax.nn.relu(vals[f"h{H}"]) @ params[f"h{H}->y"][0]["W"]
        F = F + 0.5 * jnp.sum((vals["y"] - yhat) ** 2)
        return F / B

    _check_grads(net, vals, ref)


# ------------------------------------------------------------------ conv edges
def _conv_ref(x, W, bias, pad):
    """Cross-correlation by explicit shifted sums (independent of lax.conv)."""
    O, I, k, _ = W.shape
    xp = jnp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho, Wo = xp.shape[2] - k + 1, xp.shape[3] - k + 1
    out = jnp.zeros((x.shape[0], O, Ho, Wo))
    for di in range(k):
        for dj in range(k):
            patch = xp[:, :, di:di + Ho, dj:dj + Wo]  # [B, I, Ho, Wo]
            out = out + jnp.einsum("bihw,oi->bohw", patch, W[:, :, di, dj])
    return out + bias[None, :, None, None]


def conv_model():
    conv = b.term(b.tr("conv", kernel=3, padding=1))
    mp = b.term(b.tr("maxpool", 2), b.tr("flatten"), b.tr("dense"))
    ap = b.term(b.tr("avgpool", 2), b.tr("flatten"), b.tr("dense"))
    return b.model(
        "cnn",
        [b.node("x", (2, 6, 6)), b.node("c1", (3, 6, 6), act="relu"),
         b.node("c2", (3, 6, 6), act="relu"), b.node("y", 5)],
        [b.edge("x", "c1", conv), b.edge("x", "c2", conv), b.edge("c1", "y", mp),
         b.edge("c2", "y", ap)],
        [b.query("train", ("x", "y")), b.query("test", ("x",), ("y",))],
    )


def test_conv_energy(x64):
    net = build(conv_model(), seed=3, stack=True)
    conv_groups = [t for t in net.plan.terms if t.steps[0].kind == "conv"]
    assert len(conv_groups) == 1 and conv_groups[0].size == 2  # one grouped convolution
    B = 3
    vals = _random_acts(net, B)

    def ref(vals, params):
        F = 0.0
        pre_y = 0.0
        for c, pool in (("c1", "max"), ("c2", "avg")):
            p = params[f"x->{c}"][0]
            F = F + 0.5 * jnp.sum((vals[c] - jax.nn.relu(_conv_ref(vals["x"], p["W"], p["b"], 1))) ** 2)
            r = vals[c].reshape(B, 3, 3, 2, 3, 2)
            pooled = r.max(axis=(3, 5)) if pool == "max" else r.mean(axis=(3, 5))
            q = params[f"{c}->y"][2]
            pre_y = pre_y + pooled.reshape(B, -1) @ q["W"] + q["b"]
        F = F + 0.5 * jnp.sum((vals["y"] - pre_y) ** 2)
        return F / B

    _check_grads(net, vals, ref)


# ------------------------------------------------------------------ cyclic graph
def cyclic_model(act="tanh"):
    return b.model(
        "loop",
        [b.node("img", 5), b.node("a", 4, act=act), b.node("b", 4, act=act), b.node("label", 3)],
        [b.edge("img", "a"), b.edge("a", "b"), b.edge("b", "label"), b.edge("b", "a")],
        [b.query("train", ("img", "label")), b.query("test", ("img",), ("label",))],
    )


def test_cyclic_energy(x64):
    net = build(cyclic_model(), seed=4)
    B = 4
    vals = _random_acts(net, B)

    def ref(vals, params):
        def lin(u, v, h):
            p = params[f"{u}->{v}"][0]
            return h @ p["W"] + p["b"]

        mu_a = jnp.tanh(lin("img", "a", vals["img"]) + lin("b", "a", vals["b"]))
        mu_b = jnp.tanh(lin("a", "b", vals["a"]))
        mu_l = lin("b", "label", vals["b"])
        return 0.5 * (jnp.sum((vals["a"] - mu_a) ** 2) + jnp.sum((vals["b"] - mu_b) ** 2)
                      + jnp.sum((vals["label"] - mu_l) ** 2)) / B

    _check_grads(net, vals, ref)
    with pytest.raises(ForwardError, match="cycle"):
        forward(net, {"img": vals["img"], "label": vals["label"]})


# ------------------------------------------------------------------ priors, precision, leaves
def test_prior_precision_and_free_leaves(x64):
    m = b.model(
        "gen",
        [b.node("z", 3, prior=(0.5, 2.0)), b.node("h", 4, act="tanh"),
         b.node("img", 6, precision=3.0)],
        [b.edge("z", "h"), b.edge("h", "img")],
        [b.query("train", ("img",))],
    )
    net = build(m, seed=5)
    B = 2
    vals = _random_acts(net, B)

    def ref(vals, params):
        p1, p2 = params["z->h"][0], params["h->img"][0]
        return (0.5 * jnp.sum(((vals["z"] - 0.5) / 2.0) ** 2)
                + 0.5 * jnp.sum((vals["h"] - jnp.tanh(vals["z"] @ p1["W"] + p1["b"])) ** 2)
                + 1.5 * jnp.sum((vals["img"] - (vals["h"] @ p2["W"] + p2["b"])) ** 2)) / B

    _check_grads(net, vals, ref)
    # a query that clamps nothing below h: img is a free leaf, left out of F
    q = compile_query(net, {"clamp": ["z"]})
    assert q.leaf_names == ("img",)
    e = float(E(net, net.pack(vals), q))
    p1 = net.term_params("z->h")[0]
    want = (0.5 * jnp.sum(((vals["z"] - 0.5) / 2.0) ** 2)
            + 0.5 * jnp.sum((vals["h"] - jnp.tanh(vals["z"] @ p1["W"] + p1["b"])) ** 2)) / B
    assert e == pytest.approx(float(want), abs=TOL)


def test_finite_differences(x64):
    net = build(cyclic_model(), seed=6)
    vals = _random_acts(net, 3, seed=10)
    h = net.pack(vals)
    f = jax.jit(lambda h: energy(net, h))
    g = jax.jit(jax.grad(f))(h)
    d = jax.tree_util.tree_map(lambda a: _rand(99, a.shape), h)
    eps = 1e-6
    hp = jax.tree_util.tree_map(lambda a, b: a + eps * b, h, d)
    hm = jax.tree_util.tree_map(lambda a, b: a - eps * b, h, d)
    fd = (f(hp) - f(hm)) / (2 * eps)
    an = sum(jnp.sum(a * b) for a, b in zip(g, d))
    assert float(fd) == pytest.approx(float(an), rel=1e-7)
    # parameters
    gp = eqx.filter_jit(eqx.filter_grad(lambda n: energy(n, h)))(net)
    dp = jax.tree_util.tree_map(lambda a: _rand(7, a.shape), net.params)
    shift = lambda s: eqx.tree_at(lambda n: n.params, net,
                                  jax.tree_util.tree_map(lambda a, b: a + s * b, net.params, dp))
    fdp = (E(shift(eps), h) - E(shift(-eps), h)) / (2 * eps)
    anp = sum(jnp.sum(a * b) for a, b in zip(jax.tree_util.tree_leaves(gp.params),
                                               jax.tree_util.tree_leaves(dp)))
    assert float(fdp) == pytest.approx(float(anp), rel=1e-7)


# ------------------------------------------------------------------ forward pass
def test_forward_energy_equals_output_loss(x64):
    m = b.mlp([6, 8, 8, 3], act="tanh", out_energy="categorical")
    net = build(m, seed=7)
    B = 6
    x = _rand(1, (B, 6))
    y = jax.nn.one_hot(jnp.arange(B) % 3, 3, dtype=jnp.float64)
    q = compile_query(net, "train")

    @eqx.filter_jit
    def run(net, x, y):
        h0 = initialise(net, q, clamp_data(net, q, {"x": x, "y": y}), Initialisation("forward"))
        fw = forward(net, {"x": x})
        r = infer(net, q, h0, GradientDescent(10, optax.sgd(0.05)))
        return dict(h0=h0, ne=node_energies(net, h0, q), F0=energy(net, h0, q), fw=fw,
                    mu=predictions(net, net.pack(fw)), r=r, F_end=energy(net, r.h, q))

    o = run(net, x, y)
    assert float(o["ne"]["h1"]) == 0.0 and float(o["ne"]["h2"]) == 0.0
    # the output loss (cross-entropy of the forward logits) by hand
    fw = o["fw"]
    p = net.term_params("h2->y")[0]
    logits = fw["h2"] @ p["W"] + p["b"]
    ce = -jnp.mean(jnp.sum(y * jax.nn.log_softmax(logits), axis=1))
    assert float(o["F0"]) == pytest.approx(float(ce), abs=TOL)
    np.testing.assert_allclose(fw["y"], jax.nn.softmax(logits), atol=TOL)
    # predictions at the forward values reproduce them
    np.testing.assert_allclose(o["mu"]["h2"], fw["h2"], atol=TOL)
    # a small GD step never increases F
    F = [float(o["F0"])] + [float(e) for e in o["r"].energies[1:]] + [float(o["F_end"])]
    assert all(b <= a + 1e-14 for a, b in zip(F, F[1:]))
    assert F[-1] < F[0]


def test_forward_requires_clamped_roots(x64):
    net = build(b.mlp([3, 4, 2]))
    with pytest.raises(ForwardError, match="roots not clamped: x"):
        forward(net, {"y": jnp.zeros((2, 2))})
