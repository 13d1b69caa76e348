"""Reading a class node by enumeration (``relax_classes``): closed-form energies of a linear
label-generative model, the winning class and its activities, and the errors."""

import _build as b
import numpy as np
import optax
import pytest

from pcgraph import GradientDescent, Initialisation, build, relax_classes


def _model():
    """label[3] (prior N(0, 1)) and a style z[2] (prior N(0, 1)) -> img[6], linear."""
    m = b.model("lg", [b.node("label", 3, prior=(0.0, 1.0)), b.node("z", 2, prior=(0.0, 1.0)),
                       b.node("img", 6)],
                [b.edge("label", "img"), b.edge("z", "img")],
                [b.query("train", ("label", "img")), b.query("classify", ("img",), ("label",))])
    return build(m, seed=1)


def _closed_form(net, x):
    """F_k(x) = min_z ½‖x − e_k·A − z·V − c‖² + ½‖z‖² + ½‖e_k‖², per example and class."""
    A, a = (np.asarray(v) for v in net.term_params("label->img")[0].values())
    V, v = (np.asarray(v) for v in net.term_params("z->img")[0].values())
    c = a + v
    out = np.zeros((len(x), 3))
    for k in range(3):
        r = x - A[k] - c
        z = np.linalg.solve(V @ V.T + np.eye(2), V @ r.T).T  # ridge: the exact minimiser
        out[:, k] = 0.5 * np.sum((r - z @ V) ** 2, 1) + 0.5 * np.sum(z**2, 1) + 0.5
    return out


def test_energies_and_classes_match_the_closed_form(x64):
    net = _model()
    x = np.random.default_rng(0).standard_normal((7, 6)) * 2
    gd = GradientDescent(steps=800, optimizer=optax.sgd(0.1))
    res = relax_classes(net, "classify", {"img": x}, "label", gd, init=Initialisation("zero"))
    ref = _closed_form(net, x)
    np.testing.assert_allclose(np.asarray(res.energies), ref, atol=1e-8)
    np.testing.assert_array_equal(np.asarray(res.classes), ref.argmin(1))
    assert len(set(ref.argmin(1))) > 1  # the examples do not all pick one class
    lab = np.asarray(net.get(res.h, "label"))
    np.testing.assert_array_equal(lab, np.eye(3)[ref.argmin(1)])  # the winner's one-hot
    np.testing.assert_array_equal(np.asarray(net.get(res.h, "img")), x)


def test_enumeration_needs_a_free_vector_node():
    net = _model()
    x = np.zeros((2, 6))
    with pytest.raises(ValueError, match="clamps 'label'"):
        relax_classes(net, "train", {"img": x, "label": np.zeros(2, int)}, "label")
    with pytest.raises(KeyError, match="unknown node"):
        relax_classes(net, "classify", {"img": x}, "nope")


def test_labelgen_samples_and_classifies_by_class():
    """models/labelgen.pcg on ten synthetic classes (a random prototype image each, plus noise):
    the image generated from each label's mean style is nearest to that class's prototype, and
    ``relax_classes`` answers its ``classify`` query for held-out images far above chance."""
    from pathlib import Path

    import pcgraph

    rng = np.random.default_rng(0)
    protos = (rng.random((10, 784)) < 0.3).astype(np.float32)

    def draw(n):
        y = np.repeat(np.arange(10), n)
        return np.clip(protos[y] + 0.2 * rng.standard_normal((len(y), 784)), 0, 1).astype(np.float32), y

    x, y = draw(32)
    net = pcgraph.build(pcgraph.load(Path(__file__).parent.parent / "models" / "labelgen.pcg"), seed=0)
    net = pcgraph.fit(net, {"label": y, "img": x}, epochs=8, seed=0, eval_data=False,
                      trace_inference=False).net
    gd0 = pcgraph.resolve_config(net.plan.settings, steps=0).inference
    labels = np.arange(10)
    mu = net.get(pcgraph.relax(net, "style", {"label": labels}, gd0).h, "z")
    img = net.get(pcgraph.relax(net, "generate", {"label": labels, "z": mu}, gd0).h, "img")
    nearest = np.argmin(((np.asarray(img)[:, None] - protos[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(nearest, labels)
    xt, yt = draw(3)
    got = np.asarray(relax_classes(net, "classify", {"img": xt}, "label").classes)
    assert np.mean(got == yt) >= 0.9
