"""Partial observations (``clamp NODE where MASK``): closed-form equilibria of linear graphs, the
energy of the observed elements only, the language (validator, fmt, Prop. 3.2 feasibility)."""

import _build as b
import numpy as np
import optax
import pytest

from pcgraph import (
    GradientDescent,
    Initialisation,
    PcgError,
    build,
    compile_query,
    energy,
    format_model,
    load,
    make_train_step,
    query_feasibility,
    relax,
)
from pcgraph._infer import clamp_data, observed_masks


def _gd(steps):
    return GradientDescent(steps=steps, optimizer=optax.sgd(0.1))


def _rng(seed):
    return np.random.default_rng(seed)


def _params(net, name):
    p = net.term_params(name)[0]
    return np.asarray(p["W"]), np.asarray(p["b"])


def _decoder():
    """z (prior N(0, 1)) -> img (linear): inpainting has a closed form."""
    m = b.model("dec", [b.node("z", 3, prior=(0.0, 1.0)), b.node("img", 8)],
                [b.edge("z", "img")],
                [b.query("train", ("img",)),
                 b.QueryIR("inpaint", (), ("img",), partial=(("img", "mask"),))])
    net = build(m, seed=3)
    # a non-zero bias so that missing elements at zero would be visibly wrong
    W, _ = _params(net, "z->img")
    return net.with_term_params("z->img", ({"W": W, "b": np.linspace(-1, 1, 8)},))


def test_inpainting_a_linear_decoder_matches_the_closed_form(x64):
    net = _decoder()
    W, c = _params(net, "z->img")
    x = _rng(0).standard_normal((4, 8))
    mask = (_rng(1).random((4, 8)) < 0.5).astype(float)
    mask[:, :3] = 1  # at least three observed elements per row
    res = relax(net, "inpaint", {"img": x, "mask": mask}, _gd(600), init=Initialisation("zero"))
    img = np.asarray(net.get(res.h, "img"))
    z = np.asarray(net.get(res.h, "z"))
    for i in range(4):
        o = mask[i] == 1
        A = W[:, o].T  # observed rows of the map z -> img
        z_ref = np.linalg.solve(A.T @ A + np.eye(3), A.T @ (x[i, o] - c[o]))
        np.testing.assert_allclose(z[i], z_ref, atol=1e-8)
        np.testing.assert_allclose(img[i, o], x[i, o], atol=1e-12)  # observed: the data
        np.testing.assert_allclose(img[i, ~o], (z_ref @ W + c)[~o], atol=1e-8)  # missing: μ


def test_only_observed_elements_count(x64):
    net = _decoder()
    W, c = _params(net, "z->img")
    q = compile_query(net, "inpaint")
    x = _rng(2).standard_normal((5, 8))
    z = _rng(3).standard_normal((5, 3))
    mask = (_rng(4).random((5, 8)) < 0.5).astype(float)
    data = {"img": x, "mask": mask}
    h = clamp_data(net, q, data)
    h = net.pack({"img": net.get(h, "img"), "z": z})
    e = energy(net, h, q, observed_masks(net, q, data))
    ref = (0.5 * np.sum(mask * (x - z @ W - c) ** 2) + 0.5 * np.sum(z**2)) / 5
    assert abs(float(e) - ref) < 1e-10


def test_partly_clamped_inner_node(x64):
    """x -> h -> y linear, x and y clamped, h observed where its mask is 1: observed elements
    stay at the data and the missing ones reach the minimiser of the quadratic energy."""
    m = b.model("chain", [b.node("x", 3), b.node("h", 6), b.node("y", 4)],
                [b.edge("x", "h"), b.edge("h", "y")],
                [b.QueryIR("q", ("x", "y"), (), partial=(("h", "hmask"),))])
    net = build(m, seed=1)
    A, a0 = _params(net, "x->h")
    V, c = _params(net, "h->y")
    x, y = _rng(5).standard_normal((2, 3)), _rng(6).standard_normal((2, 4))
    hd = _rng(7).standard_normal((2, 6))
    mask = np.array([[1, 0, 1, 0, 1, 0], [0, 0, 1, 1, 1, 1]], float)
    res = relax(net, "q", {"x": x, "y": y, "h": hd, "hmask": mask}, _gd(800),
                init=Initialisation("zero"))
    h = np.asarray(net.get(res.h, "h"))
    for i in range(2):
        o, mi = mask[i] == 1, mask[i] == 0
        pred = x[i] @ A + a0
        r = y[i] - c - hd[i, o] @ V[o]
        Vm = V[mi]  # rows of the missing elements
        h_ref = np.linalg.solve(np.eye(mi.sum()) + Vm @ Vm.T, pred[mi] + Vm @ r)
        np.testing.assert_allclose(h[i, o], hd[i, o], atol=1e-12)
        np.testing.assert_allclose(h[i, mi], h_ref, atol=1e-8)


def test_mask_errors():
    net = _decoder()
    with pytest.raises(KeyError, match="mask"):
        relax(net, "inpaint", {"img": np.zeros((2, 8))})
    with pytest.raises(ValueError, match=r"the mask of node 'img' has shape \(2, 7\)"):
        relax(net, "inpaint", {"img": np.zeros((2, 8)), "mask": np.ones((2, 7))})
    with pytest.raises(ValueError, match="not trained on: answer it with pcgraph.relax"):
        make_train_step(net, "inpaint")


SRC = """model g {
  node z: [4]
  node img: [8]
  z -> img : dense
  query train { clamp img }
  query inpaint { clamp img where mask; read img }
}
"""


def test_language():
    m = load(SRC)
    q = m.query("inpaint")
    assert q.partial == (("img", "mask"),) and q.clamp == () and q.read == ("img",)
    assert "query inpaint { clamp img where mask; read img }" in format_model(m)
    assert load(format_model(m)) == m
    # Prop. 3.2: the partly clamped img is free, so z is an unclamped root either way, and a
    # partly clamped root makes forward initialisation impossible
    assert query_feasibility(m, q).as_dict()["unclamped_roots"] == ["z"]
    m2 = load(SRC.replace("clamp img where mask; read img", "clamp z where zm"))
    f = query_feasibility(m2, m2.query("inpaint")).as_dict()
    assert not f["feasible"] and f["unclamped_roots"] == ["z"]


@pytest.mark.parametrize("q,code,msg", [
    ("clamp img; clamp img where mask", "clamped-and-masked",
     "query 'inpaint' clamps 'img' both whole and where 'mask'"),
    ("clamp img where z", "mask-is-a-node", "the mask 'z' of 'img' has the name of a node"),
    ("clamp imgg where mask", "undefined", "imgg"),
])
def test_language_errors(q, code, msg):
    with pytest.raises(PcgError) as err:
        load(SRC.replace("clamp img where mask; read img", q))
    assert msg in str(err.value)
