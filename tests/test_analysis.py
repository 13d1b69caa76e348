"""``pcgraph analyse`` and ``_analysis``: Lanczos vs the dense Hessian, the equilibrated energy
(closed form built by hand, seed 002's chain formula), the singular-system warning, PC vs BP."""

from __future__ import annotations

import contextlib
import io
import json
import math
import warnings

import numpy as np
import pytest

import _build as b
import pcgraph
from pcgraph import (
    SingularSystemWarning,
    analyse,
    chain_equilibrated_energy,
    equilibrated_energy,
    equilibrium,
    hessian_spectrum,
    update_alignment,
)
from pcgraph import Initialisation
from pcgraph._infer import clamp_data
from pcgraph import build, compile_query, activity_hessian


def _batch(net, q, seed=0, B=3, jitter=0.0):
    rng = np.random.default_rng(seed)
    data = {n: rng.standard_normal((B,) + tuple(net.node_shape(n))) for n in q.clamp}
    h = clamp_data(net, q, data)
    if jitter:
        h = tuple(a + jitter * rng.standard_normal(a.shape) for a in h)
    return data, h


@pytest.mark.parametrize("kind", ["mlp_tanh", "resnet", "cyclic"])
def test_lanczos_extremes_equal_dense_hessian(x64, kind):
    if kind == "mlp_tanh":
        net = build(b.mlp([4, 7, 6, 3], act="tanh"), seed=1)
    elif kind == "resnet":
        net = build(b.resnet(4, 6, 5, 2), seed=2)
    else:
        net = build(b.model(
            "cyc", [b.node("img", 4), b.node("a", 5, act="tanh"), b.node("c", 5),
                    b.node("label", 2)],
            [b.edge("img", "a"), b.edge("a", "c"), b.edge("c", "label"), b.edge("c", "a")],
            [b.query("train", ("img", "label"))]), seed=3)
    q = compile_query(net, "train")
    _, h = _batch(net, q, seed=4, jitter=0.5)
    B = h[0].shape[1]
    lam = np.linalg.eigvalsh(np.asarray(activity_hessian(net, q, h))) * B  # per-sample scale
    dense = hessian_spectrum(net, q, h, method="dense")
    lanczos = hessian_spectrum(net, q, h, method="lanczos", tol=1e-10)
    assert lanczos.method == "lanczos" and lanczos.matvecs > 0 and lanczos.converged
    assert lanczos.residual < 1e-6 and dense.residual is None
    assert dense.lambda_min == pytest.approx(lam[0], abs=1e-10)
    assert lanczos.lambda_min == pytest.approx(lam[0], abs=1e-4)
    assert lanczos.lambda_max == pytest.approx(lam[-1], abs=1e-4)
    if lam[0] > 0:
        assert lanczos.cond == pytest.approx(lam[-1] / lam[0], rel=1e-4)
    else:  # away from an equilibrium a non-linear energy can be non-convex: no condition number
        assert lanczos.cond == math.inf and lanczos.lambda_min < 0
    batch_scale = hessian_spectrum(net, q, h, method="lanczos", tol=1e-10, scale="batch")
    assert batch_scale.lambda_max == pytest.approx(lam[-1] / B, rel=1e-6)


def test_lanczos_lambda_min_of_an_ill_conditioned_chain_within_a_product_budget(x64):
    """A deep linear chain near the identity: its Hessian is a discrete Laplacian whose λ_min sits
    in a cluster near 0 (cond in the hundreds); the shifted Lanczos finds it to 1e-4 of the
    spectrum's width, with a small residual, in far fewer products than the dimension."""
    depth, width = 24, 8
    net = build(b.mlp([width] * (depth + 1), act="identity"), seed=0)
    q = compile_query(net, "train")
    _, h = _batch(net, q, seed=1, B=2)
    lam = np.linalg.eigvalsh(np.asarray(activity_hessian(net, q, h))) * 2
    assert lam[-1] / lam[0] > 50
    s = hessian_spectrum(net, q, h, method="lanczos", tol=1e-8, ncv=40)
    assert s.converged and s.matvecs < s.n
    assert s.lambda_min == pytest.approx(lam[0], abs=1e-4 * (lam[-1] - lam[0]))
    assert s.residual < 1e-3 * lam[-1]


def test_analyse_is_the_one_name_and_the_old_names_still_work(x64):
    """``pcgraph.analyse`` is what ``pcgraph analyse`` prints (one query); the old names warn."""
    net = build(b.mlp([4, 6, 3], act="tanh"), seed=0)
    q = compile_query(net, "train")
    data, _ = _batch(net, q)
    r = pcgraph.analyse(net, "train", data, steps=3, spectrum=False)
    assert r.query == "train" and r.steps == 3
    with pytest.warns(DeprecationWarning, match="now pcgraph.analyse"):
        old = pcgraph.analyse_query(net, "train", data, steps=3, spectrum=False)
    assert old.energy_end == r.energy_end
    model = b.mlp([4, 6, 3])
    with pytest.warns(DeprecationWarning, match="graph_report"):
        assert pcgraph.analyse(model) == pcgraph.graph_report(model)
    assert pcgraph.graph_report(model).longest_path == 2
    with pytest.raises(TypeError, match="query"):
        pcgraph.analyse(net)


def _closed_form_by_hand(net, q, data):
    A, bb, c = b.linear_system_by_hand(net, q.free_names, data)
    return float(np.mean(c - 0.5 * np.einsum("bi,bi->b", bb, np.linalg.solve(A, bb.T).T)))


def test_equilibrated_energy_of_a_cyclic_linear_graph_matches_closed_form(x64):
    m = b.model(
        "cyc", [b.node("img", 4), b.node("a", 3, precision=2.0), b.node("c", 3),
                b.node("z", 2, prior=(0.5, 2.0)), b.node("label", 2)],
        [b.edge("img", "a"), b.edge("a", "c"), b.edge("c", "label"), b.edge("c", "a"),
         b.edge("z", "c")],
        [b.query("train", ("img", "label"))])
    net = build(m, seed=7)
    q = compile_query(net, "train")
    data, _ = _batch(net, q, seed=1, B=5)
    want = _closed_form_by_hand(net, q, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert equilibrated_energy(net, q, data) == pytest.approx(want, rel=1e-10)
        # the matrix-free path: Lanczos for the spectrum, conjugate gradients for A⁻¹b
        assert equilibrated_energy(net, q, data, method="lanczos") == pytest.approx(want,
                                                                                    rel=1e-6)


@pytest.mark.parametrize("bias", [False, True])
def test_chain_rescaled_mse_equals_closed_form(x64, bias):
    """Seed 002: the equilibrated energy of a deep linear chain is a rescaled MSE (to 1e-6)."""
    names = ["x", "h1", "h2", "h3", "h4", "y"]
    sizes = [3, 5, 4, 6, 4, 2]
    m = b.model("chain",
                [b.node(n, s, precision=(0.5 if n == "h2" else 1.0)) for n, s in zip(names, sizes)],
                [b.edge(u, v, b.dense(bias=bias)) for u, v in zip(names, names[1:])],
                [b.query("train", ("x", "y")), b.query("test", ("x",), ("y",))],
                parameterisation="mupc")
    net = build(m, seed=3)
    q = compile_query(net, "train")
    data, _ = _batch(net, q, seed=2, B=6)
    want = _closed_form_by_hand(net, q, data)
    assert chain_equilibrated_energy(net, q, data) == pytest.approx(want, rel=1e-6, abs=1e-12)
    assert equilibrated_energy(net, q, data) == pytest.approx(want, rel=1e-6, abs=1e-12)
    with pytest.raises(ValueError, match="deep linear chain"):
        chain_equilibrated_energy(net, "test", {"x": data["x"]})


def test_free_root_without_prior_warns_instead_of_a_number(x64):
    # z [4] -> x [2]: F = ½‖x − W z‖², A = W Wᵀ has rank 2 < 4
    m = b.model("gen", [b.node("z", 4), b.node("x", 2)], [b.edge("z", "x")],
                [b.query("train", ("x",))])
    net = build(m, seed=0)
    data = {"x": np.random.default_rng(0).standard_normal((3, 2))}
    with pytest.warns(SingularSystemWarning, match=r"free root\(s\) without a prior: z"):
        F = equilibrated_energy(net, "train", data)
    assert math.isnan(F)
    eq = equilibrium(net, "train", data, warn=False)
    assert eq.singular and eq.free_roots == ("z",) and "prior = gaussian" in eq.message
    # a prior anchors z: no warning, and the value is the closed form
    m2 = b.model("gen", [b.node("z", 4, prior=(0.0, 1.0)), b.node("x", 2)], [b.edge("z", "x")],
                 [b.query("train", ("x",))])
    net2 = build(m2, seed=0)
    q2 = compile_query(net2, "train")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        F2 = equilibrated_energy(net2, q2, data)
    assert F2 == pytest.approx(_closed_form_by_hand(net2, q2, data), rel=1e-10)


def test_equilibrated_energy_rejects_a_nonlinear_graph(x64):
    net = build(b.mlp([3, 4, 2], act="tanh"), seed=0)
    with pytest.raises(ValueError, match="not a linear graph"):
        equilibrated_energy(net, "train", {"x": np.ones((2, 3)), "y": np.ones((2, 2))})


def test_alignment_at_forward_init_and_near_the_target(x64):
    net = build(b.mlp([4, 6, 5, 3], act="tanh"), seed=1)
    q = compile_query(net, "train")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 4))
    from pcgraph._energy import forward

    yhat = np.asarray(forward(net, {"x": x})["y"])
    # T = 0 from the forward pass: only the output error is non-zero, so PC's last-layer gradient
    # is BP's and the earlier layers get nothing
    data = {"x": x, "y": yhat + rng.standard_normal(yhat.shape)}
    r0 = analyse(net, q, data, steps=0, init=Initialisation("forward"), spectrum=False)
    assert r0.alignment.per_term["h2->y"] == pytest.approx(1.0, abs=1e-12)
    assert math.isnan(r0.alignment.per_term["x->h1"])
    assert r0.total_init == pytest.approx(r0.energy_init["y"])
    h = clamp_data(net, q, data)
    with pytest.raises(ValueError, match="no output loss"):
        update_alignment(net, "test", {"x": x}, h)


def test_pc_gradient_at_equilibrium_is_the_gradient_of_the_rescaled_mse(x64):
    """Envelope theorem: ∂F/∂θ at the exact equilibrium is dF*/dθ, F* seed 002's formula (checked
    along a random direction by central differences). So GD on F* is PC with exact inference."""
    import equinox as eqx
    import jax

    from pcgraph import energy, linear_equilibrium

    names = ["x", "h1", "h2", "h3", "y"]
    net = build(b.chain(names, [3, 4, 5, 4, 2], queries=[b.query("train", ("x", "y"))]), seed=4)
    q = compile_query(net, "train")
    data, h = _batch(net, q, seed=3, B=4)
    h_star, _ = linear_equilibrium(net, q, h)
    g = eqx.filter_grad(lambda n: energy(n, h_star, q))(net)
    params, static = eqx.partition(net, eqx.is_inexact_array)
    d = jax.tree_util.tree_map(
        lambda a: np.random.default_rng(a.size).standard_normal(a.shape), params)
    eps = 1e-5

    def F_at(t):
        moved = jax.tree_util.tree_map(lambda a, v: a + t * v, params, d)
        return chain_equilibrated_energy(eqx.combine(moved, static), q, data)

    fd = float(F_at(eps) - F_at(-eps)) / (2 * eps)
    pc = sum(float(np.sum(np.asarray(a) * np.asarray(v))) for a, v in zip(
        jax.tree_util.tree_leaves(eqx.filter(g, eqx.is_inexact_array)),
        jax.tree_util.tree_leaves(d)))
    assert pc == pytest.approx(fd, rel=1e-6)


# ------------------------------------------------------------------------------ CLI
MLP = """
model tiny {
  settings { steps = 4; activity_lr = 0.1 }
  node x: [5]
  node h1, h2: [6] act = tanh
  node y: [3] energy = categorical
  x -> h1 -> h2 -> y : dense
  query train { clamp x, y }
  query test  { clamp x; read y }
}
"""

SINGULAR = """
model gen {
  node z: [4]
  node x: [2]
  z -> x : dense
  query train { clamp x }
}
"""


def _cli(*argv):
    from pcgraph._cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["analyse", *argv])
    return code, out.getvalue(), err.getvalue()


def test_cli_analyse_json_fields_and_figure(tmp_path):
    f = tmp_path / "tiny.pcg"
    f.write_text(MLP)
    png = tmp_path / "e.png"
    code, out, err = _cli(str(f), "--json", "--batch-size", "4", "-o", str(png))
    assert code == 0, err
    doc = json.loads(out)
    assert {"model", "file", "data", "checkpoint", "batch_size", "seed", "queries"} <= set(doc)
    assert [q["query"] for q in doc["queries"]] == ["train", "test"]
    tr = doc["queries"][0]
    assert {"energy_init", "energy_end", "total_init", "total_end", "hessian", "alignment",
            "linear", "equilibrium", "notes", "warnings", "steps", "init"} <= set(tr)
    assert tr["steps"] == 4 and set(tr["energy_end"]) == {"h1", "h2", "y"}
    assert tr["hessian"]["n"] == 4 * 12 and tr["hessian"]["lambda_max"] > tr["hessian"][
        "lambda_min"] > 0
    assert -1 <= tr["alignment"]["cosine"] <= 1 and tr["linear"] is False
    assert tr["equilibrium"] is None and doc["queries"][1]["alignment"] is None
    assert png.exists() and png.stat().st_size > 1000
    code, out, _ = _cli(str(f), "--query", "train", "--steps", "0", "--no-spectrum")
    assert code == 0 and "query train" in out and "query test" not in out


def test_cli_analyse_says_when_lanczos_stopped_at_its_cap(tmp_path):
    f = tmp_path / "tiny.pcg"
    f.write_text(MLP)
    code, out, err = _cli(str(f), "--query", "train", "--method", "lanczos", "--maxiter", "1",
                          "--ncv", "3", "--tol", "1e-14", "--json")
    assert code == 0, err
    spec = json.loads(out)["queries"][0]["hessian"]
    assert spec["converged"] is False and spec["residual"] > 0 and spec["matvecs"] > 0
    assert "did not converge" in err and "upper bound" in err and "residual" in err


def test_cli_analyse_singular_linear_graph_warns(tmp_path):
    f = tmp_path / "gen.pcg"
    f.write_text(SINGULAR)
    code, out, err = _cli(str(f), "--json")
    assert code == 0
    eq = json.loads(out)["queries"][0]["equilibrium"]
    assert eq["singular"] is True and eq["equilibrated_energy"] is None
    assert eq["free_roots_without_prior"] == ["z"]
    assert "warning:" in err and "without a prior: z" in err


def test_cli_analyse_errors(tmp_path):
    f = tmp_path / "tiny.pcg"
    f.write_text(MLP)
    code, _, err = _cli(str(f), "--query", "nope")
    assert code == 2 and "no query 'nope'" in err and "train, test" in err
    code, _, err = _cli(str(tmp_path / "missing.pcg"))
    assert code == 2 and "no such file" in err
    code, _, err = _cli(str(f), "-o", str(tmp_path / "x.jpg"))
    assert code == 2 and ".png" in err
    code, _, err = _cli(str(f), "--checkpoint", str(tmp_path))
    assert code == 2 and "checkpoint" in err
    bad = tmp_path / "bad.pcg"
    bad.write_text(MLP.replace("x -> h1", "x -> hh1"))
    code, _, err = _cli(str(bad))
    assert code == 1 and "hh1" in err
    code, _, err = _cli(str(f), "--param", "width=3")  # the file declares no param width
    assert code == 1 and "no param 'width'" in err


def test_cli_analyse_reads_the_weights_of_a_checkpoint(tmp_path):
    import equinox as eqx
    import optax

    from pcgraph._checkpoint import save
    from pcgraph import load

    f = tmp_path / "tiny.pcg"
    f.write_text(MLP)
    net = build(load(str(f)), seed=5)
    opt = optax.adam(1e-3).init(eqx.filter(net, eqx.is_inexact_array))
    save(tmp_path / "run" / "checkpoint.eqx", net, opt, None, {"epoch": 1})
    args = ("--query", "train", "--no-spectrum", "--json", "--steps", "2")
    ck = ("--checkpoint", str(tmp_path / "run"))
    # --seed picks the random batch; the weights come from the checkpoint
    runs = [_cli(str(f), *extra, *args) for extra in
            (ck + ("--seed", "5"), ("--seed", "5"), ck + ("--seed", "0"), ("--seed", "0"))]
    assert all(code == 0 for code, _, _ in runs), runs[0][2]
    a5, b5, a0, b0 = (json.loads(o)["queries"][0]["energy_end"] for _, o, _ in runs)
    assert a5 == pytest.approx(b5, rel=1e-6)  # the same weights as building with seed 5
    assert a0 != pytest.approx(b0, rel=1e-3)  # not the weights of seed 0
    out = runs[0][1]
    assert json.loads(out)["checkpoint"].endswith("checkpoint.eqx")
