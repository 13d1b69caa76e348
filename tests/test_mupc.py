"""μPC (DESIGN §4, seed 000): the scalings computed from the graph, and deep training.

Model: models/resnet_mupc.pcg, sized with ``load(..., params=...)``. L = ``depth`` = H, the number
of weight layers: x -> h1 (input layer), depth - 2 residual layers, h{depth-1} -> y (readout).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import _build as b
import pcgraph
from pcgraph._energy import forward
from pcgraph import make_train_step

MODEL = "resnet_mupc.pcg"


def _load(models_dir, depth, width, inputs=784, classes=10):
    return pcgraph.load(models_dir / MODEL, params={"depth": depth, "width": width,
                                                   "inputs": inputs, "classes": classes})


def test_params_override_is_checked(models_dir):
    m = _load(models_dir, 5, 12)
    assert len(m.nodes) == 6  # x, h1..h4, y
    with pytest.raises(pcgraph.PcgError, match="no param 'heigth'"):
        pcgraph.load(models_dir / MODEL, params={"heigth": 3})


def test_mupc_scalings_match_formulas_depth8(models_dir):
    D, N, L, C = 784, 64, 8, 10
    net = pcgraph.build(_load(models_dir, L, N, D, C), seed=0)
    assert net.plan.parameterisation == "mupc"
    assert net.plan.depth == L  # L = number of weight layers = H
    sc = net.scales()
    assert sc["x->h1"] == pytest.approx(1 / math.sqrt(D))
    for i in range(2, L):
        assert sc[f"h{i - 1}->h{i}[0]"] == pytest.approx(1 / math.sqrt(N * L))  # dense(relu)
        assert sc[f"h{i - 1}->h{i}[1]"] == 1.0  # identity skip
    assert sc[f"h{L - 1}->y"] == pytest.approx(1 / N)
    assert len(sc) == 1 + 2 * (L - 2) + 1
    # weights N(0, 1), no biases, activation on the source
    for name in sc:
        params = net.term_params(name)
        assert all("b" not in p for p in params)
    W = np.concatenate([np.ravel(net.term_params(f"h{i - 1}->h{i}[0]")[0]["W"])
                        for i in range(2, L)])
    assert abs(W.mean()) < 0.02 and abs(W.std() - 1.0) < 0.02
    pre = {n: t.pre for t in net.plan.terms for n in t.names if t.steps[0].kind == "dense"}
    assert pre.pop("x->h1") == "identity" and set(pre.values()) == {"relu"}

    # the scaled forward pass is the μPC residual network, written out by hand
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, D)).astype(np.float32)
    w = {n: np.asarray(net.term_params(n)[0]["W"]) for n in sc if not n.endswith("[1]")}
    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    z = x @ w["x->h1"] / math.sqrt(D)
    zs = [z]
    for i in range(2, L):
        z = z + relu(z) @ w[f"h{i - 1}->h{i}[0]"] / math.sqrt(N * L)
        zs.append(z)
    yhat = relu(z) @ w[f"h{L - 1}->y"] / N
    out = forward(net, {"x": x})
    for i, zi in enumerate(zs, start=1):
        np.testing.assert_allclose(np.asarray(out[f"h{i}"]), zi, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.asarray(out["y"]), yhat, rtol=2e-4, atol=2e-6)

    # the standard parameterisation of the same graph: every scale 1, LeCun-normal weights
    std = pcgraph.build(_load(models_dir, L, N, D, C), seed=0, parameterisation="standard")
    assert set(std.scales().values()) == {1.0}
    Ws = np.asarray(std.term_params("h3->h4[0]")[0]["W"])
    assert abs(Ws.std() * math.sqrt(N) - 1.0) < 0.1


def test_mupc_scalings_without_skips():
    """No identity term anywhere: hidden layers get 1/√N (not 1/√(N·L))."""
    from _build import dense, edge, model, node, query

    m = model("mlp", [node("x", 20), node("h1", 16), node("h2", 16), node("y", 4)],
              [edge("x", "h1", dense(bias=False)), edge("h1", "h2", dense(bias=False)),
               edge("h2", "y", dense(bias=False))],
              queries=[query("train", ["x", "y"])])
    sc = pcgraph.build(m, seed=0, parameterisation="mupc").scales()
    assert sc == pytest.approx({"x->h1": 1 / math.sqrt(20), "h1->h2": 1 / 4, "h2->y": 1 / 16})


def _train_losses(net, ds, *, depth, batch, n_steps, seed=0):
    import optax

    step = make_train_step(net, "train", weight_optimizer=optax.adam(0.05), **b.opts(net, steps=depth, activity_lr=0.5, activity_scale="batch", init="forward"))
    state = step.init(net)
    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(n_steps):
        idx = rng.choice(len(ds.x_train), batch, replace=False)
        net, state, m = step(net, state, {"x": ds.x_train[idx], "y": ds.one_hot(ds.y_train[idx])})
        losses.append(float(m["loss"]))
    return np.asarray(losses)


def test_mupc_32_layers_trains_standard_does_not(models_dir):
    """A 32-layer residual PCN (width 16, batch 16, digits), T = 32 GD activity steps of lr 0.5
    (batch-mean gradient, as JPC), Adam 0.05 on the weights, 50 steps. The training loss is the
    output energy ½‖y − ŷ‖² at the forward pass; the best constant output (ŷ = 1/10 everywhere)
    gives 0.45, ŷ = 0 gives 0.5. μPC falls well below that; the standard parameterisation with
    the same learning rates starts exploded and never beats a constant output (it collapses onto
    ŷ ≈ 0)."""
    ds = pcgraph.data.load("digits")
    H, N, B, n = 32, 16, 16, 50
    m = _load(models_dir, H, N, inputs=64)
    mu = _train_losses(pcgraph.build(m, seed=0), ds, depth=H, batch=B, n_steps=n)
    sp = _train_losses(pcgraph.build(m, seed=0, parameterisation="standard"), ds,
                       depth=H, batch=B, n_steps=n)
    assert np.all(np.isfinite(mu))
    assert mu[-10:].mean() < 0.75 * mu[:10].mean()
    assert mu[-10:].mean() < 0.40
    assert not (sp[-10:].mean() < 0.44)  # NaN, or no better than a constant output
    assert sp[:10].mean() > 10 * mu[:10].mean()  # exploded at init
