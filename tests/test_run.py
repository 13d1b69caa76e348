"""``pcgraph.load_run``: a run trained on the command line, opened from Python, gives back the
figure the command printed (network, memories/amortiser and settings all restored)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pytest

import pcgraph
from pcgraph._cli import main

MODELS = Path(__file__).resolve().parent.parent / "models"
FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.exists(),
                                   reason="apt-get install dataset-fashion-mnist")


def _train(model, out, *extra) -> dict:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        code = main(["train", str(MODELS / model), "--out", str(out), "--json", "--quiet",
                     "--epochs", "1", *extra])
    assert code == 0
    return json.loads(buf.getvalue())


def test_digits_mlp(tmp_path):
    summary = _train("digits_mlp.pcg", tmp_path / "run", "--data", "digits")
    run = pcgraph.load_run(tmp_path / "run")
    assert run.model.name == "digits_mlp" and run.algorithm == "pc" and run.epoch == 1
    assert run.settings["steps"] == 10 and run.settings["weight_lr"] == 0.001
    assert run.carry is None  # forward initialisation keeps no state
    ds = run.load_data()
    assert run.evaluate(ds)["accuracy"] == summary["test_accuracy"]
    # the plain API with the run's pieces gives the same figure
    assert pcgraph.evaluate(run.net, ds, **run.inference)["accuracy"] == summary["test_accuracy"]
    # the optimiser state is the trained one (Adam's step count = the updates done)
    counts = [np.asarray(x) for x in __import__("jax").tree_util.tree_leaves(run.opt_state)
              if np.asarray(x).dtype == np.int32]
    assert counts and all(int(c) == summary["steps"] for c in counts)


def test_errors_name_what_to_pass(tmp_path):
    with pytest.raises(pcgraph.RunError, match="no checkpoint.eqx here; train first"):
        pcgraph.load_run(tmp_path / "nothing")
    _train("digits_mlp.pcg", tmp_path / "run", "--data", "digits", "--steps", "2")
    with pytest.raises(pcgraph.RunError, match="belongs to model digits_mlp, not cyclic_digits"):
        pcgraph.load_run(tmp_path / "run", model=MODELS / "cyclic_digits.pcg")
    # a model file that changed shape since
    text = (MODELS / "digits_mlp.pcg").read_text().replace("node h1, h2: [64]", "node h1, h2: [32]")
    with pytest.raises(pcgraph.RunError, match="another version of model digits_mlp"):
        pcgraph.load_run(tmp_path / "run", model=text)


@needs_fashion
def test_decoder_with_mem(tmp_path):
    summary = _train("decoder.pcg", tmp_path / "dec", "--data", "fashion-mnist",
                     "--fraction", "0.02")
    run = pcgraph.load_run(tmp_path / "dec")
    assert run.carry is not None  # the memories
    ds = run.load_data()
    assert run.evaluate(ds)["mse"] == pytest.approx(summary["test_mse"], rel=1e-6)
    infer = pcgraph.make_eval_step(run.net, "infer", **run.inference)
    z = infer(run.net, {"img": ds.x_test[:4]}, carry=run.carry)["z"]
    assert np.asarray(z).shape == (4, 64) and np.isfinite(np.asarray(z)).all()
    # without the state the error names what to pass, in the caller's terms
    with pytest.raises(pcgraph.InitError, match=r"carry=run.carry \(run = pcgraph.load_run"):
        infer(run.net, {"img": ds.x_test[:4]})
    # forgetting the memories changes the figure: the loaded state is the one used
    fresh = pcgraph.fresh_carry(run.net, init=None, batch_size=64, seed=0)
    other = run.evaluate(ds, carry=fresh)["mse"]
    assert other != pytest.approx(summary["test_mse"], rel=1e-6)


@needs_fashion
def test_hybrid_auto(tmp_path):
    summary = _train("hybrid.pcg", tmp_path / "hyb", "--data", "fashion-mnist",
                     "--fraction", "0.02", "--steps", "5")
    run = pcgraph.load_run(tmp_path / "hyb")
    assert run.settings["steps"] == 5 and run.carry is not None  # amortiser + memory
    ds = run.load_data()
    assert run.evaluate(ds)["mse"] == pytest.approx(summary["test_mse"], rel=1e-6)
    # T = 0: the amortised guess alone, from the trained amortiser
    t0 = dataclasses.replace(run.config.inference, steps=0)
    assert np.isfinite(run.evaluate(ds, inference=t0)["mse"])
