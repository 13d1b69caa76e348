"""``pcgraph train`` / ``eval`` end to end on the embedded digits data set."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from pcgraph._cli import main

MODELS = Path(__file__).resolve().parent.parent / "models"
MLP = str(MODELS / "digits_mlp.pcg")

JSON_FIELDS = {"model", "data", "algorithm", "seed", "epochs", "steps", "steps_per_epoch",
               "batch_size", "test_accuracy", "train_accuracy", "test_mse", "final_energy",
               "final_loss", "smm_per_update", "total_smm", "ms_per_step", "train_time_s",
               "wall_time_s", "out_dir", "checkpoint", "resumed_from"}


def _train(out, *extra):
    return main(["train", MLP, "--data", "digits", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """One epoch via the CLI with --json; (exit code, summary, run dir)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("run") / "one"
    buf, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        code = _train(out, "--epochs", "1", "--json")
    return code, json.loads(buf.getvalue()), out, err.getvalue()


def _arrays(ckpt):
    from pcgraph._checkpoint import load
    from pcgraph import load as load_model, build
    import equinox as eqx
    import optax

    net = build(load_model(MLP), seed=0)
    like_opt = optax.adam(1e-3).init(eqx.filter(net, eqx.is_inexact_array))
    net, opt_state, _, meta = load(ckpt, net, like_opt, None)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves((net, opt_state))], meta


def test_one_epoch_exit_0_metrics_and_json(one_epoch):
    code, summary, out, err = one_epoch
    assert code == 0
    assert JSON_FIELDS <= set(summary)
    assert summary["epochs"] == 1 and summary["steps"] == 1437 // 64
    assert summary["smm_per_update"] == 23 and summary["total_smm"] == 23 * summary["steps"]
    assert 0.3 < summary["test_accuracy"] <= 1.0
    assert summary["out_dir"] == str(out)
    assert "epoch 1/1" in err and "ms/step" in err  # the progress line
    lines = (out / "metrics.jsonl").read_text().splitlines()
    recs = [json.loads(line) for line in lines]  # every line is valid JSON
    kinds = {r["type"] for r in recs}
    assert {"epoch", "step", "inference"} <= kinds
    ep = [r for r in recs if r["type"] == "epoch"]
    assert len(ep) == 1 and ep[0]["test_accuracy"] == summary["test_accuracy"]
    assert (out / "checkpoint.eqx").exists() and (out / "checkpoint.json").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]


def test_resume_is_bit_identical(one_epoch, tmp_path, capsys):
    _, _, one, _ = one_epoch
    straight = tmp_path / "straight"
    assert _train(straight, "--epochs", "2", "--quiet") == 0
    capsys.readouterr()
    resumed = tmp_path / "resumed"
    import shutil

    shutil.copytree(one, resumed)
    assert _train(resumed, "--epochs", "2", "--resume", "--quiet", "--json") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from"] == 1 and summary["epochs"] == 2
    a, meta_a = _arrays(straight / "checkpoint.eqx")
    b, meta_b = _arrays(resumed / "checkpoint.eqx")
    assert meta_a["epoch"] == meta_b["epoch"] == 2 and meta_a["step"] == meta_b["step"]
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and np.array_equal(x, y)  # bit-identical
    ep = [json.loads(s) for s in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in ep if r["type"] == "epoch"] == [1, 2]
    # resuming with a trajectory option that differs from the checkpoint is refused
    assert _train(resumed, "--epochs", "3", "--resume", "--weight-lr", "0.5") == 2
    assert "options differ" in capsys.readouterr().err


def test_eval_subcommand(one_epoch, capsys):
    _, summary, out, _ = one_epoch
    assert main(["eval", MLP, "--checkpoint", str(out / "checkpoint.eqx"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 360 and res["test_accuracy"] == pytest.approx(summary["test_accuracy"])
    assert main(["eval", MLP, "--checkpoint", str(out / "missing.eqx")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_plot_of_a_run(one_epoch, tmp_path):
    _, _, out, _ = one_epoch
    png = tmp_path / "c.png"
    assert main(["plot", str(out), "-o", str(png)]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_divergence_exits_1_without_half_written_files(tmp_path, capsys):
    out = tmp_path / "div"
    code = _train(out, "--epochs", "2", "--activity-lr", "100", "--steps", "30", "--quiet")
    assert code == 1
    err = capsys.readouterr().err
    assert "diverged at step 1" in err and ("h1" in err or "h2" in err)
    assert "Traceback" not in err
    assert not (out / "checkpoint.eqx").exists()
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # whole lines only


def test_errors_are_messages_not_tracebacks(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PCGRAPH_DATA", str(tmp_path / "nodata"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr("pcgraph.data.SYSTEM_DIRS", {})
    assert main(["train", MLP, "--data", "mnist", "--data-dir", str(tmp_path),
                 "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err

    wrong = tmp_path / "wrong.pcg"
    wrong.write_text("model wrong {\n  node x: [32]\n  node y: [10] energy = categorical\n"
                     "  x -> y : dense\n  query train { clamp x, y }\n"
                     "  query test { clamp x; read y }\n}\n")
    assert main(["train", str(wrong), "--data", "digits", "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "node 'x'" in err and "(32,)" in err and "(64,)" in err

    bad = tmp_path / "bad.pcg"
    bad.write_text("model bad { node x: [3]\n x -> nope : dense }\n")
    assert main(["train", str(bad), "--data", "digits", "--out", str(tmp_path / "b")]) == 1
    assert "nope" in capsys.readouterr().err

    assert _train(tmp_path / "e", "--epochs", "0") == 2
    assert "--epochs 0" in capsys.readouterr().err


def test_hooked_into_the_main_cli(one_epoch, tmp_path, capsys):
    from pcgraph import _cli as cli

    png = tmp_path / "m.png"
    assert cli.main(["draw", MLP, "-o", str(png)]) == 0 and png.stat().st_size > 0
    _, summary, out, _ = one_epoch
    assert cli.main(["eval", MLP, "--checkpoint", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == summary["test_accuracy"]


def test_cyclic_model_with_memory_state_resumes_exactly(tmp_path, capsys):
    """--init-option reaches the initialiser; the memories are checkpointed and restored."""
    import shutil

    cyc = str(MODELS / "cyclic_digits.pcg")
    args = ["--data", "digits", "--steps", "3", "--batch-size", "128", "--quiet",
            "--init-option", "mem_patterns=16", "--init-node", "b=mem"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(["train", cyc, "--out", str(one), "--epochs", "1", *args]) == 0
    assert main(["train", cyc, "--out", str(two), "--epochs", "2", *args]) == 0
    resumed = tmp_path / "resumed"
    shutil.copytree(one, resumed)
    capsys.readouterr()
    assert main(["train", cyc, "--data", "digits", "--out", str(resumed), "--epochs", "2",
                 "--resume", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["resumed_from"] == 1 and summary["smm_per_update"] == 2 * 3 + 2

    def arrays(ckpt):
        from pcgraph._checkpoint import load
        import equinox as eqx

        from pcgraph import build, fresh_carry, resolve_config, load as load_model

        net = build(load_model(cyc), seed=0)
        config = resolve_config(net.plan.settings, init_options={"mem_patterns": 16})
        like = fresh_carry(net, batch_size=128, seed=0, init=config.init)
        opt = config.weight_optimizer.init(eqx.filter(net, eqx.is_inexact_array))
        _, _, carry, _ = load(ckpt, net, opt, like)
        assert set(carry.memories) == {"a", "b"}
        return [np.asarray(x) for x in jax.tree_util.tree_leaves(carry)]

    for x, y in zip(arrays(two / "checkpoint.eqx"), arrays(resumed / "checkpoint.eqx")):
        assert np.array_equal(x, y)
    capsys.readouterr()
    assert main(["eval", cyc, "--checkpoint", str(two), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] > 0.2
    # a bad option is a message, not a traceback
    assert main(["train", cyc, "--out", str(tmp_path / "bad"), "--epochs", "1", "--data",
                 "digits", "--init-option", "mem_patern=3", "--quiet"]) == 2
    assert "unknown init option" in capsys.readouterr().err


INPAINT = """model dig_inpaint {
  settings { steps = 10; activity_lr = 0.1; init = zero; batch_size = 64 }
  node z: [8] prior = gaussian(0, 1)
  node img: [64] act = sigmoid
  z -> img : dense
  query train { clamp img }
  query inpaint { clamp img where mask; read img }
}
"""


def test_mask_trains_and_evaluates_a_masked_query(tmp_path, capsys):
    """``--mask half --test-query inpaint``: trained on whole digits, test_mse is the MSE on the
    missing (bottom-half) pixels of the test images, the same as pcgraph.evaluate on the run with
    the masks of pcgraph._masks; ``--query inpaint --mask random:0.5`` trains on partial
    observations; a spec or a model --mask cannot serve is a message, exit 2."""
    import pcgraph
    from pcgraph import data as D
    from pcgraph._masks import element_masks

    model = tmp_path / "m.pcg"
    model.write_text(INPAINT)
    base = ["train", str(model), "--data", "digits", "--normalize", "unit", "--epochs", "1",
            "--quiet", "--json"]
    assert main([*base, "--out", str(tmp_path / "a"), "--test-query", "inpaint",
                 "--mask", "half"]) == 0
    got = json.loads(capsys.readouterr().out)
    run = pcgraph.load_run(tmp_path / "a")
    ds = D.load("digits", normalize="unit", seed=0)
    m = element_masks("half", len(ds.x_test), tuple(ds.input_shape)).reshape(len(ds.x_test), 64)
    assert m[:, :32].all() and not m[:, 32:].any()  # 8x8 digits: the top four rows observed
    ref = pcgraph.evaluate(run.net, {"img": ds.x_test.reshape(-1, 64), "mask": m},
                           query="inpaint")
    assert 0 < got["test_mse"] < 0.5 and abs(got["test_mse"] - ref["mse"]) < 1e-6
    assert main([*base, "--out", str(tmp_path / "b"), "--query", "inpaint", "--test-query",
                 "inpaint", "--mask", "random:0.5"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["steps"] > 0 and np.isfinite(got["test_mse"])
    assert main([*base, "--out", str(tmp_path / "c"), "--mask", "halves"]) == 2
    assert "expected half, random:P or a FILE.npy" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "d"), "--mask", "half"]) == 2
    assert "neither query 'train' nor 'test' clamps a node `where` a mask" in capsys.readouterr().err
