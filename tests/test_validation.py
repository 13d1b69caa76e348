"""Validation split, per-epoch validation metrics and the best epoch (``_validation``, ``fit``)."""

from __future__ import annotations

import numpy as np
import pytest

from pcgraph import build, data, evaluate, fit, load
from pcgraph._validation import best_epoch, split_validation
from conftest import MODELS


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def _rows(x):
    return {r.tobytes() for r in np.asarray(x)}


def test_split_is_stratified_disjoint_and_fixed_by_the_seed(digits):
    a = split_validation(digits, 0.2, seed=3)
    b = split_validation(digits, 0.2, seed=3)
    c = split_validation(digits, 0.2, seed=4)
    n = len(digits.x_train)
    assert len(a.x_train) + len(a.x_val) == n
    np.testing.assert_array_equal(a.x_val, b.x_val)  # the seed fixes the split
    assert not np.array_equal(a.x_val, c.x_val)
    assert not _rows(a.x_val) & _rows(a.x_train)  # no example in both
    assert _rows(a.x_val) | _rows(a.x_train) == _rows(digits.x_train)
    for k in range(10):  # round(0.2 · n_k) of every class
        assert (a.y_val == k).sum() == round(0.2 * (digits.y_train == k).sum())
    np.testing.assert_array_equal(a.x_test, digits.x_test)  # the test set never changes


def test_split_matches_data_load(digits):
    """fit's split of a loaded data set is the one ``data.load(val_fraction=...)`` draws."""
    loaded = data.load("digits", val_fraction=0.15, seed=2)
    ours = split_validation(digits, 0.15, seed=2)
    np.testing.assert_array_equal(ours.y_val, loaded.y_val)
    assert len(ours.x_train) == len(loaded.x_train)


def test_bad_val_fraction_is_refused(digits):
    with pytest.raises(ValueError, match="val_fraction"):
        split_validation(digits, 1.0, seed=0)
    with pytest.raises(ValueError, match="already has a validation split"):
        split_validation(split_validation(digits, 0.1, seed=0), 0.1, seed=0)
    with pytest.raises(ValueError, match="needs a Dataset"):
        split_validation({"x": digits.x_train}, 0.1, seed=0)


def test_best_epoch_rules():
    h = [{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": 0.7},
         {"epoch": 3, "val_accuracy": 0.7}, {"epoch": 4, "val_accuracy": float("nan")}]
    assert best_epoch(h) == 2  # first of the ties; NaN never wins
    assert best_epoch([{"epoch": 1, "val_mse": 2.0}, {"epoch": 2, "val_mse": 1.0}]) == 2
    assert best_epoch([{"epoch": 1, "test_accuracy": 0.9}]) is None


@pytest.fixture(scope="module")
def run(digits):
    events = []
    net = build(load(MODELS / "digits_mlp.pcg"), seed=0)
    # weight lr high enough that validation accuracy moves between epochs
    res = fit(net, digits, epochs=4, batch_size=64, seed=0, val_fraction=0.2,
              callback=events.append, trace_inference=False)
    return res, events


def test_fit_trains_without_the_validation_examples(run, digits):
    res, events = run
    n_train = len(split_validation(digits, 0.2, seed=0).x_train)
    assert res.steps_per_epoch == n_train // 64


def test_fit_records_validation_and_the_best_epoch(run, digits):
    res, events = run
    vals = [m["val_accuracy"] for m in res.history]
    assert all(0.0 <= v <= 1.0 for v in vals)
    want = 1 + int(np.argmax(vals))
    assert res.best_epoch == want
    assert all(m["best_epoch"] == 1 + int(np.argmax(vals[:i + 1]))
               for i, m in enumerate(res.history))
    # the kept network is that epoch's: its validation accuracy is the recorded one
    held = split_validation(digits, 0.2, seed=0)
    got = evaluate(res.best_net, held, split="val")["accuracy"]
    assert got == pytest.approx(vals[want - 1])
    epoch_events = [e for e in events if e["kind"] == "epoch"]
    assert epoch_events[want - 1]["net"] is res.best_net


def test_fit_without_validation_has_no_best(digits):
    net = build(load(MODELS / "digits_mlp.pcg"), seed=0)
    res = fit(net, digits, epochs=1, batch_size=128, seed=0, trace_inference=False)
    assert res.best_epoch is None and "val_accuracy" not in res.history[0]


# ------------------------------------------------------------------------------ CLI
def _cli(argv):
    import contextlib
    import io
    import json

    from pcgraph._cli import main

    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        code = main(argv)
    out = buf.getvalue()
    return code, (json.loads(out) if out.strip().startswith("{") else out), err.getvalue()


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("val") / "run"
    code, summary, err = _cli(["train", str(MODELS / "digits_mlp.pcg"), "--data", "digits",
                               "--out", str(out), "--epochs", "3", "--val-fraction", "0.2",
                               "--weight-lr", "0.003", "--json", "--quiet"])
    assert code == 0, err
    return out, summary


def test_cli_val_fraction_metrics_and_best_checkpoint(cli_run):
    import json

    from pcgraph._checkpoint import read_meta

    out, summary = cli_run
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in epochs if r.get("type") == "epoch"]
    vals = [r["val_accuracy"] for r in epochs]
    best = 1 + int(np.argmax(vals))
    assert [r["best_epoch"] for r in epochs][-1] == best == summary["best_epoch"]
    assert summary["best_val"] == vals[best - 1] and summary["val_accuracy"] == vals[-1]
    assert read_meta(out / "best.eqx")["epoch"] == best  # the checkpoint of that epoch
    assert read_meta(out / "checkpoint.eqx")["epoch"] == 3  # and the last one beside it
    assert (out / "best.json").exists()


def test_cli_eval_split_val_reproduces_the_recorded_validation(cli_run):
    out, summary = cli_run
    mlp = str(MODELS / "digits_mlp.pcg")
    code, res, err = _cli(["eval", mlp, "--checkpoint", str(out / "best.eqx"), "--split", "val",
                           "--json"])
    assert code == 0, err
    assert res["split"] == "val" and res["val_accuracy"] == pytest.approx(summary["best_val"])
    n_val = len(data.load("digits", val_fraction=0.2, seed=0).x_val)
    assert res["n"] == n_val


def test_cli_eval_split_val_needs_a_validation_split(tmp_path):
    mlp = str(MODELS / "digits_mlp.pcg")
    code, _, err = _cli(["train", mlp, "--data", "digits", "--out", str(tmp_path / "r"),
                         "--epochs", "1", "--quiet"])
    assert code == 0, err
    assert not (tmp_path / "r" / "best.eqx").exists()
    code, _, err = _cli(["eval", mlp, "--checkpoint", str(tmp_path / "r"), "--split", "val"])
    assert code == 2 and "without a validation split" in err


def test_cli_resume_refuses_another_val_fraction(cli_run):
    out, _ = cli_run
    code, _, err = _cli(["train", str(MODELS / "digits_mlp.pcg"), "--data", "digits", "--out",
                         str(out), "--epochs", "4", "--val-fraction", "0.1", "--resume"])
    assert code == 2 and "--val-fraction" in err
