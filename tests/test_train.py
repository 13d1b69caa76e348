"""``fit`` / ``evaluate`` on the embedded digits data set."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

import pcgraph
from pcgraph import (
    GradientDescent, Initialisation, TrainingDiverged, build, data, evaluate, fit, load,
)
from pcgraph._binding import bind

GENERATIVE = """
model gen {
  settings { steps = 5; activity_lr = 0.1; weight_lr = 0.01 }
  node z: [16] prior = gaussian(0, 1)
  node img: [64]
  z -> img : dense
  query train { clamp img }
}
"""

WRONG_SHAPE = """
model wrong {
  node x: [32]
  node y: [10] energy = categorical
  x -> y : dense
  query train { clamp x, y }
  query test { clamp x; read y }
}
"""


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


@pytest.fixture(scope="module")
def mlp(models_dir_module):
    return load(models_dir_module / "digits_mlp.pcg")


@pytest.fixture(scope="module")
def models_dir_module():
    return Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def trained(mlp, digits):
    events = []
    net = build(mlp, seed=0)
    res = fit(net, digits, epochs=5, batch_size=64, seed=0, callback=events.append)
    return res, events


def test_fit_reaches_good_accuracy(trained, digits):
    res, _ = trained
    # measured: 94.7% test accuracy after 5 epochs (chance 10%)
    acc = evaluate(res.net, digits)["accuracy"]
    assert acc >= 0.85
    assert res.final["test_accuracy"] == pytest.approx(acc)
    assert res.traces == 1  # one jitted step, never retraced
    h = res.history
    assert [m["epoch"] for m in h] == [1, 2, 3, 4, 5]
    assert h[-1]["energy"] < h[0]["energy"]
    for m in h:
        for k in ("energy", "train_loss", "train_accuracy", "test_accuracy", "smm_per_update",
                  "total_smm", "ms_per_step", "wall_time_s"):
            assert m[k] is not None and math.isfinite(m[k]), k


def test_callback_events(trained):
    res, events = trained
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end"
    steps = [e for e in events if e["kind"] == "step"]
    assert len(steps) == 5 * res.steps_per_epoch == 5 * (1437 // 64)
    assert [e["step"] for e in steps] == list(range(1, len(steps) + 1))
    epochs = [e for e in events if e["kind"] == "epoch"]
    assert len(epochs) == 5 and epochs[-1]["state"].epoch == 5
    trace = epochs[-1]["inference"]  # per-node energy over the inference steps
    assert set(trace) == {"h1", "h2", "y"} and len(trace["y"]) == 10 + 1


def test_smm_counts(mlp):
    net = build(mlp, seed=0)
    gd = GradientDescent(10)

    def smm(method):
        s = pcgraph.make_train_step(net, "train", method=method, inference=gd).smm
        return s["smm_bp" if method == "bp" else "smm_pc"], s["smm_per_update"]

    # digits_mlp: L = 3 edges on the longest path, forward init costs L
    assert smm("pc") == (2 * 10 + 3, 23.0)
    assert smm("bp") == (2 * 3 - 1, 5.0)
    assert smm("ipc") == (23, 2.3)


def test_evaluation_never_uses_the_labels(trained, digits):
    res, _ = trained
    rng = np.random.default_rng(0)
    shuffled = dataclasses.replace(digits, y_test=rng.permutation(digits.y_test))
    assert evaluate(res.net, shuffled)["accuracy"] < 0.25
    # every example counts once, whatever the batch size (last batch padded and masked)
    r = evaluate(res.net, digits, batch_size=100)
    assert r["n"] == 360
    assert r["accuracy"] == pytest.approx(evaluate(res.net, digits, batch_size=360)["accuracy"])


def test_dict_data(trained, digits, mlp):
    res, _ = trained
    r = evaluate(res.net, {"x": digits.x_test, "y": digits.y_test})
    assert r["accuracy"] == pytest.approx(res.final["test_accuracy"])
    net = build(mlp, seed=1)
    out = fit(net, {"x": digits.x_train, "y": digits.one_hot(digits.y_train)}, epochs=1,
              batch_size=128, eval_data={"x": digits.x_test, "y": digits.y_test},
              trace_inference=False)
    assert out.final["test_accuracy"] > 0.3
    assert out.final["train_accuracy"] is None  # no data set: no train-split evaluation


def test_train_eval_max_and_eval_init(mlp, digits):
    """``train_eval_max=0`` skips the training split; ``eval_init`` sets the evaluation's
    initialisation (here the model's forward pass after training from zero)."""
    out = fit(build(mlp, seed=2), digits, epochs=1, batch_size=128, steps=2, init="zero",
              train_eval_max=0, trace_inference=False, eval_init=Initialisation())
    assert out.final["train_accuracy"] is None
    forward = evaluate(out.net, digits)["accuracy"]  # the model's policy: the forward pass
    zero = evaluate(out.net, digits, init=Initialisation("zero"),
                    inference=GradientDescent(2))["accuracy"]
    assert forward != zero
    assert out.final["test_accuracy"] == pytest.approx(forward)


def test_shape_mismatch_names_node_before_compiling(digits):
    from pcgraph import parse_model

    net = build(parse_model(WRONG_SHAPE), seed=0)
    with pytest.raises(data.DataShapeError, match=r"node 'x' has shape \(32,\).*\(64,\)"):
        fit(net, digits, epochs=1, batch_size=32)
    with pytest.raises(data.DataShapeError, match="node 'x'"):
        fit(net, {"x": digits.x_train, "y": digits.y_train}, epochs=1, batch_size=32)


def test_divergence_names_step_and_node(mlp, digits):
    net = build(mlp, seed=0)
    with pytest.raises(TrainingDiverged) as info:
        fit(net, digits, epochs=1, batch_size=64, activity_lr=100.0, steps=30,
            trace_inference=False)
    e = info.value
    assert e.step == 1 and e.epoch == 1
    assert e.nodes and set(e.nodes) <= {"h1", "h2", "y"}
    assert "step 1" in str(e) and e.nodes[0] in str(e)


def test_generative_model_reports_reconstruction(digits):
    from pcgraph import parse_model

    net = build(parse_model(GENERATIVE), seed=0)
    b = bind(net)
    assert b.input == "img" and b.generative
    # auto gives z and h a memory; an untrained memory retrieves 0, so "before" is zero init
    before = evaluate(net, digits, init=Initialisation("zero"))["mse"]
    res = fit(net, digits, epochs=2, batch_size=64, trace_inference=False)
    m = res.final
    assert m["test_accuracy"] is None and math.isfinite(m["test_mse"])
    assert m["test_mse"] < before
