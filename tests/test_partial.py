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
    evaluate,
    fit,
    format_model,
    inference_trace,
    load,
    make_eval_step,
    make_train_step,
    node_energies,
    query_feasibility,
    relax,
)
from pcgraph._infer import clamp_data, observed_masks
from pcgraph.data import DataShapeError


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


def test_node_energies_leave_out_the_missing_elements(x64):
    """Per-node energies of a masked query, against the hand-written masked energy of each node:
    img's sums only observed pixels, z's is its prior; together they are F."""
    net = _decoder()
    W, c = _params(net, "z->img")
    q = compile_query(net, "inpaint")
    x, z = _rng(10).standard_normal((5, 8)), _rng(11).standard_normal((5, 3))
    mask = (_rng(12).random((5, 8)) < 0.5).astype(float)
    data = {"img": x, "mask": mask}
    obs = observed_masks(net, q, data)
    h = net.pack({"img": net.get(clamp_data(net, q, data), "img"), "z": z})
    e = node_energies(net, h, q, obs)
    assert abs(float(e["img"]) - 0.5 * np.sum(mask * (x - z @ W - c) ** 2) / 5) < 1e-10
    assert abs(float(e["z"]) - 0.5 * np.sum(z**2) / 5) < 1e-10
    assert abs(float(e["img"] + e["z"]) - float(energy(net, h, q, obs))) < 1e-10
    # the missing pixels' values change nothing
    h2 = net.pack({"img": np.where(mask == 1, x, 1e3), "z": z})
    assert abs(float(node_energies(net, h2, q, obs)["img"]) - float(e["img"])) < 1e-10


def test_inference_trace_of_a_masked_query(x64):
    """The per-node trace (plots, divergence reports) relaxes with the mask and reports masked
    energies: at t = 0 (z = 0) img's is ½ Σ mask·(x − c)² / B; the trace ends at relax's answer."""
    net = _decoder()
    _, c = _params(net, "z->img")
    x = _rng(13).standard_normal((4, 8))
    mask = (_rng(14).random((4, 8)) < 0.5).astype(float)
    data = {"img": x, "mask": mask}
    tr = inference_trace(net, data, query="inpaint", inference=_gd(30),
                         init=Initialisation("zero"))
    assert len(tr["img"]) == 31
    assert abs(tr["img"][0] - 0.5 * np.sum(mask * (x - c) ** 2) / 4) < 1e-10
    q = compile_query(net, "inpaint")
    res = relax(net, "inpaint", data, _gd(30), init=Initialisation("zero"))
    e = node_energies(net, res.h, q, observed_masks(net, q, data))
    assert abs(tr["img"][-1] - float(e["img"])) < 1e-9 and abs(tr["z"][-1] - float(e["z"])) < 1e-9


def test_evaluate_a_masked_query_scores_the_missing_elements(x64):
    """``evaluate`` on ``{img, mask}``: the eval step relaxes with the mask (the same answer as
    relax) and the MSE of the read img is over the missing elements only, pooled."""
    net = _decoder()
    x = _rng(15).standard_normal((6, 8))
    mask = (_rng(16).random((6, 8)) < 0.5).astype(float)
    mask[:, 0] = 1
    data = {"img": x, "mask": mask}
    inf, init = _gd(40), Initialisation("zero")
    step = make_eval_step(net, "inpaint", inference=inf, init=init)
    img = np.asarray(step(net, data)["img"])
    ref = np.asarray(net.get(relax(net, "inpaint", data, inf, init=init).h, "img"))
    np.testing.assert_allclose(img, ref, atol=1e-12)
    np.testing.assert_allclose(img[mask == 1], x[mask == 1])  # observed: the data
    got = evaluate(net, data, query="inpaint", inference=inf, init=init, batch_size=4)
    miss = mask == 0
    assert abs(got["mse"] - np.mean((ref[miss] - x[miss]) ** 2)) < 1e-10 and got["n"] == 6


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
    with pytest.raises(ValueError, match="not trained on by method 'ipc'"):
        make_train_step(net, "inpaint", method="ipc")


def _masked_step(net, lr):
    return make_train_step(net, "inpaint", inference=_gd(800), init=Initialisation("zero"),
                           weight_optimizer=optax.sgd(lr))


def test_training_on_partial_observations_matches_the_hand_written_energy(x64):
    """A train step of ``clamp img where mask``: z relaxes to the ridge solution of the observed
    pixels, and the weight update is −lr·∇θ of ½ Σ mask·(x − zW − c)² + ½‖z‖² (batch mean): the
    missing pixels add nothing to the energy or the update, whatever their values."""
    net = _decoder()
    W, c = _params(net, "z->img")
    x = _rng(5).standard_normal((6, 8))
    mask = (_rng(6).random((6, 8)) < 0.5).astype(float)
    mask[:, :3] = 1
    z = np.stack([np.linalg.solve(W[:, o] @ W[:, o].T + np.eye(3), W[:, o] @ (xi[o] - c[o]))
                  for xi, o in zip(x, mask == 1)])
    r = mask * (x - z @ W - c)  # the observed residuals; zero where missing
    F = (0.5 * np.sum(r**2) + 0.5 * np.sum(z**2)) / 6
    lr = 0.05
    step = _masked_step(net, lr)
    new, _, met = step(net, step.init(net), {"img": x, "mask": mask})
    assert abs(float(met["energy_end"]) - F) < 1e-9
    assert abs(float(met["loss_end"]) - 0.5 * np.sum(r**2) / 6) < 1e-9
    W1, c1 = _params(new, "z->img")
    np.testing.assert_allclose(W1, W + lr * z.T @ r / 6, atol=1e-9)
    np.testing.assert_allclose(c1, c + lr * r.sum(0) / 6, atol=1e-9)
    garbage = np.where(mask == 1, x, 1e3)  # other values at the missing pixels: the same step
    again, _, met2 = step(net, step.init(net), {"img": garbage, "mask": mask})
    np.testing.assert_array_equal(_params(again, "z->img")[0], W1)
    assert float(met2["energy_end"]) == float(met["energy_end"])


def test_fit_takes_the_mask_beside_the_data():
    net = _decoder()
    x = _rng(7).standard_normal((16, 8)).astype(np.float32)
    mask = (_rng(8).random((16, 8)) < 0.5).astype(np.float32)
    res = fit(net, {"img": x, "mask": mask}, query="inpaint", epochs=2, batch_size=8, steps=5, init="zero",
              eval_data=False, trace_inference=False)
    assert res.traces == 1 and np.isfinite(res.final["energy"])
    assert not np.array_equal(_params(res.net, "z->img")[0], _params(net, "z->img")[0])
    with pytest.raises(DataShapeError, match="no 'mask' array"):
        fit(net, {"img": x}, query="inpaint", epochs=1, batch_size=8, eval_data=False)
    with pytest.raises(DataShapeError, match="the mask 'mask' of node 'img' has shape"):
        fit(net, {"img": x, "mask": mask[:, :4]}, query="inpaint", epochs=1, batch_size=8,
            eval_data=False)


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


def test_auto_init_of_a_query_that_clamps_only_by_a_mask(x64):
    """``clamp img where mask`` clamps no whole node: the partly clamped img is free for Prop. 3.2
    (z is an unclamped root, so no forward) and no memory has an observation to recall from, so
    ``auto`` starts the free nodes at zero and answers exactly as ``init = zero``; ``mem`` asked for
    is a diagnostic (it used to fail at run time with a memory of 0 observation features)."""
    from pcgraph import init_plan

    m = load(SRC.replace("node z: [4]", "node z: [4] prior = gaussian(0, 1)"))
    assert init_plan(m, "inpaint", default="auto") == {"z": "zero", "img": "zero"}
    assert init_plan(m, "train", default="auto")["z"] == "mem"  # img clamped whole: a memory
    net = _decoder()
    x = _rng(8).standard_normal((3, 8))
    mask = (_rng(9).random((3, 8)) < 0.5).astype(float)
    for v in ("z", "img"):
        got = [np.asarray(net.get(relax(net, "inpaint", {"img": x, "mask": mask}, _gd(50),
                                        init=Initialisation(method)).h, v))
               for method in ("auto", "zero")]
        np.testing.assert_array_equal(got[0], got[1])
    with pytest.raises(PcgError, match="init = mem is impossible for node 'z' in query 'inpaint': "
                                       "the query clamps no whole node"):
        load(SRC.replace("read img }", "read img; init z = mem }"))
    with pytest.raises(PcgError, match="mem-without-observation|init = mem is impossible"):
        relax(net, "inpaint", {"img": x, "mask": mask}, _gd(5), init=Initialisation("mem"))


def test_mask_specs(tmp_path):
    """``--mask`` specs: half keeps the top rows, random:P misses a P share (the same draw for the
    same seed and split, another for another split), a file is one mask for every example."""
    from pcgraph._masks import MaskSpecError, element_masks

    h = element_masks("half", 3, (1, 28, 28))
    assert h.shape == (3, 1, 28, 28) and h[:, :, :14].all() and not h[:, :, 14:].any()
    assert np.array_equal(element_masks("half", 2, (784,)), h[:2].reshape(2, 784))
    r = element_masks("random:0.25", 200, (784,), seed=1)
    assert abs(1 - r.mean() - 0.25) < 0.01
    assert np.array_equal(r, element_masks("random:0.25", 200, (784,), seed=1))
    assert not np.array_equal(r, element_masks("random:0.25", 200, (784,), seed=1, split=2))
    f = tmp_path / "m.npy"
    np.save(f, (np.arange(784) % 2).reshape(28, 28))
    m = element_masks(str(f), 4, (1, 28, 28))
    assert m.shape == (4, 1, 28, 28) and m.sum() == 4 * 392
    for bad, msg in [("random:2", "in \\[0, 1\\]"), ("top", "expected half"),
                     (str(tmp_path / "none.npy"), "cannot read it")]:
        with pytest.raises(MaskSpecError, match=msg):
            element_masks(bad, 1, (1, 28, 28))
    np.save(f, np.full(10, 2))
    with pytest.raises(MaskSpecError, match="0/1 values"):
        element_masks(str(f), 1, (1, 28, 28))


def test_a_pickled_mask_file_is_refused_not_executed(tmp_path):
    """A ``--mask FILE.npy`` holding a pickle (object array) is refused before anything runs."""
    from pcgraph._masks import MaskSpecError, element_masks

    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(MaskSpecError, match="cannot read it"):
        element_masks(str(path), 2, (28, 28))
