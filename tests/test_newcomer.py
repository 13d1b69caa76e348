"""Issue 19's command-line behaviours: run directories, what eval/plot print, messages, every
setting as an option, collapse detection."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

import pytest

from pcgraph._cli import main
from pcgraph._collapse import Collapse, collapse

MODELS = Path(__file__).resolve().parent.parent / "models"
MLP = str(MODELS / "digits_mlp.pcg")


def _run(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("runs") / "mlp"
    code, _, _ = _run("train", MLP, "--data", "digits", "--epochs", "1", "--steps", "3",
                      "--weight-decay", "1e-4", "--optimizer", "adamw", "--out", str(d), "--quiet")
    assert code == 0
    return d


def test_a_different_run_is_not_overwritten(run_dir, capsys):
    before = (run_dir / "checkpoint.eqx").read_bytes()
    code, _, err = _run("train", MLP, "--data", "digits", "--epochs", "1", "--out", str(run_dir),
                        "--algorithm", "bp", "--quiet")
    assert code == 2
    assert "holds a different run" in err and "--algorithm pc (this one: bp)" in err
    assert "--overwrite" in err and "--steps 3 (this one: unset)" in err
    assert (run_dir / "checkpoint.eqx").read_bytes() == before


def test_same_command_replaces_its_run_and_overwrite_replaces_another(tmp_path):
    d = tmp_path / "r"
    args = ("train", MLP, "--data", "digits", "--epochs", "1", "--steps", "2", "--out", str(d),
            "--quiet")
    assert _run(*args)[0] == 0
    code, _, err = _run(*args)
    assert code == 0 and "earlier run of the same command; replacing it" in err
    code, _, err = _run(*args[:-1], "--steps", "1", "--overwrite", "--quiet")
    assert code == 0 and "--overwrite: replacing" in err
    meta = json.loads((d / "checkpoint.json").read_text())
    assert meta["config"]["steps"] == 1


def test_default_directories_differ_per_algorithm():
    from pcgraph._run import default_dir

    dirs = {default_dir("digits_mlp", a) for a in (None, "pc", "ipc", "bp")}
    assert dirs == {Path("runs/digits_mlp"), Path("runs/digits_mlp-ipc"), Path("runs/digits_mlp-bp")}


def test_weight_decay_and_settings_options_reach_the_run(run_dir):
    meta = json.loads((run_dir / "checkpoint.json").read_text())
    assert meta["config"]["weight_decay"] == 1e-4
    assert meta["config"]["weight_optimizer"] == "adamw"
    import pcgraph

    import equinox as eqx
    import jax
    import numpy as np

    run = pcgraph.load_run(run_dir)
    assert run.config.record["weight_decay"] == 1e-4 == run.settings["weight_decay"]
    # the rebuilt optimiser decays: with zero gradients AdamW's update is -lr * wd * w
    params = eqx.filter(run.net, eqx.is_inexact_array)
    zeros = jax.tree_util.tree_map(np.zeros_like, params)
    upd, _ = run.config.weight_optimizer.update(zeros, run.config.weight_optimizer.init(params),
                                                params)
    w, u = jax.tree_util.tree_leaves(params)[0], jax.tree_util.tree_leaves(upd)[0]
    np.testing.assert_allclose(u, -1e-3 * 1e-4 * w, rtol=1e-5, atol=1e-12)


def test_eval_names_the_run_and_the_split(run_dir):
    code, out, _ = _run("eval", MLP, "--checkpoint", str(run_dir))
    assert code == 0
    first = out.splitlines()[0]
    assert first.startswith(f"run {run_dir}: model digits_mlp, algorithm pc, data digits")
    assert "steps 3" in first and "weight_decay 0.0001" in first
    code, out, _ = _run("eval", MLP, "--checkpoint", str(run_dir), "--split", "train", "--json")
    res = json.loads(out)
    assert res["split"] == "train" and res["algorithm"] == "pc" and res["n"] == 1437
    assert "train_accuracy" in res and not any(k.startswith("test_") for k in res)
    assert res["settings"]["steps"] == 3


def test_eval_of_another_models_checkpoint(run_dir):
    code, _, err = _run("eval", str(MODELS / "cyclic_digits.pcg"), "--checkpoint", str(run_dir))
    assert code == 2
    assert "belongs to model digits_mlp, not cyclic_digits" in err and "Traceback" not in err
    assert "shape" not in err  # not a pytree shape error


def test_plot_names_the_run_and_draws_mse_for_generative_runs(run_dir, tmp_path):
    code, out, _ = _run("plot", str(run_dir), "-o", str(tmp_path / "c.png"))
    assert code == 0 and out.startswith(f"run {run_dir}: model digits_mlp, algorithm pc")
    # a generative run's metrics (no accuracy): the figure panel is the MSE
    import matplotlib

    from pcgraph._plot import _figure_panel

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    recs = [{"type": "epoch", "epoch": e, "train_mse": 0.5 / e, "test_mse": 0.6 / e}
            for e in (1, 2)]
    assert _figure_panel(ax, recs) and ax.get_title() == "reconstruction MSE"
    assert len(ax.lines) == 2
    plt.close(fig)


def test_cli_init_is_blamed_on_the_option(tmp_path):
    code, _, err = _run("train", str(MODELS / "cyclic_digits.pcg"), "--data", "digits",
                        "--init", "forward", "--out", str(tmp_path / "c"))
    assert code == 2  # a usage error (the option), not the model's
    assert err.startswith("--init: error: init = forward is impossible")
    assert "settings {" not in err  # the file's settings line is not shown as the culprit


def test_help_shows_model_setting_else_default(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(model setting, else 10)" in text and "(model setting, else 64)" in text
    from pcgraph._ir import DEFAULT_SETTINGS

    for key in DEFAULT_SETTINGS:  # every setting a .pcg file can hold is an option
        flag = {"weight_optimizer": "--optimizer"}.get(key, "--" + key.replace("_", "-"))
        assert flag in text, key


def test_normalize_setting_and_option(tmp_path):
    from pcgraph import load

    bad = load("model m { settings { normalize = Unit }\n node x: [3]\n node y: [3]\n"
               " x -> y : dense\n query train { clamp x, y } }", validate=False)
    from pcgraph import validate

    msgs = [d.render() for d in validate(bad)]
    assert any("did you mean 'unit'" in m for m in msgs), msgs
    code, _, _ = _run("train", MLP, "--data", "digits", "--epochs", "1", "--steps", "1",
                        "--normalize", "unit", "--out", str(tmp_path / "u"), "--quiet", "--json")
    assert code == 0
    import pcgraph

    ds = pcgraph.load_run(tmp_path / "u").load_data()
    assert ds.normalize == "unit" and ds.x_train.min() >= 0 and ds.x_train.max() <= 1


def test_did_you_mean_ignores_case_and_missing_file_has_no_zero_position(tmp_path):
    from pcgraph._cli import main as cli

    f = tmp_path / "m.pcg"
    f.write_text("model m {\n node x: [3]\n node y: [2] act = ReLU\n x -> y : dense\n"
                 " query train { clamp x, y }\n}\n")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert cli(["check", str(f)]) == 1
        assert cli(["check", str(tmp_path / "nope.pcg")]) == 1
    text = err.getvalue()
    assert "did you mean 'relu'?" in text
    assert ":0:0" not in text and "nope.pcg: error: cannot read" in text


# ------------------------------------------------------------------------------ collapse
def _hist(accs, key="test_accuracy"):
    return [{"epoch": i + 1, key: a} for i, a in enumerate(accs)]


def test_collapse_to_chance_is_found_and_named():
    # the run: peak 86.6 % at epoch 4, 18.35 % at the end
    h = _hist([0.80, 0.84, 0.85, 0.866, 0.70, 0.40, 0.25, 0.1835])
    c = collapse(h, n_classes=10)
    assert isinstance(c, Collapse) and c.epoch == 8 and c.best_epoch == 4
    assert "collapsed at epoch 8" in c.message and "86.60%" in c.message
    assert collapse(h[:5], 10) is None  # 70 %: lost less than half of its 76.6 points of gain
    assert collapse(h[:6], 10).epoch == 6  # 40 %: lost more than half
    # noise and ordinary overfitting are not a collapse; nor is a run that never learned
    assert collapse(_hist([0.9, 0.88, 0.91, 0.89]), 10) is None
    assert collapse(_hist([0.11, 0.09, 0.1]), 10) is None
    # generative: MSE more than doubled
    assert collapse(_hist([0.5, 0.3, 0.7], "test_mse")).metric == "test_mse"
    assert collapse(_hist([0.5, 0.3, 0.5], "test_mse")) is None


def _fake_test_accuracy(monkeypatch, accs):
    """``fit``'s per-epoch test evaluation reports ``accs`` in turn (everything else is real)."""
    from pcgraph import _evaluate

    accs = iter(accs)
    real = _evaluate.Evaluator.__call__

    def fake(self, net, ds, **kw):
        r = real(self, net, ds, **kw)
        if kw.get("split", "test") == "test" and "accuracy" in r:
            r = {**r, "accuracy": next(accs)}
        return r

    monkeypatch.setattr(_evaluate.Evaluator, "__call__", fake)


def test_fit_warns_once_and_records_the_collapse(monkeypatch):
    """A collapse found after an epoch is warned (CollapseWarning, naming the epoch) and kept in the
    epoch records; training goes on."""
    import pcgraph
    from pcgraph import data

    _fake_test_accuracy(monkeypatch, [0.9, 0.12, 0.11])
    ds = data.load("digits")
    net = pcgraph.build(pcgraph.load(MLP), seed=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = pcgraph.fit(net, ds, epochs=3, steps=1)
    hits = [x for x in w if issubclass(x.category, pcgraph.CollapseWarning)]
    assert len(hits) == 1 and "collapsed at epoch 2" in str(hits[0].message)
    assert res.history[0]["collapse"] is None
    assert res.history[1]["collapse"]["epoch"] == 2 and res.history[2]["collapse"]["epoch"] == 3


def test_train_prints_the_collapse_and_puts_it_in_the_summary(monkeypatch, tmp_path):
    _fake_test_accuracy(monkeypatch, [0.9, 0.12])
    code, out, err = _run("train", MLP, "--data", "digits", "--epochs", "2", "--steps", "1",
                          "--out", str(tmp_path / "c"), "--json", "--quiet")
    assert code == 0
    assert "warning: training collapsed at epoch 2: test_accuracy 12.00%" in err
    summary = json.loads(out)
    assert summary["collapse"]["epoch"] == 2 and summary["collapse"]["best_epoch"] == 1
