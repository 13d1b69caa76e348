"""Run by tests/test_sharding.py in a subprocess (XLA_FLAGS forces 8 host devices): checkpoints
across device counts through ``pcgraph train``. argv: RUN_DIR. Prints JSON: the largest parameter
and optimiser-state difference of (8 devices, then resumed on 1) and (1 device, then resumed on
data=2,layer=4) against an uninterrupted single-device run, and ``pcgraph eval --json`` of that
run on one device, with --devices 8 and with --mesh data=2,layer=4."""

import contextlib
import io
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from pcgraph._cli import main  # noqa: E402

MLP = str(Path(__file__).resolve().parent.parent / "models" / "digits_mlp.pcg")
COMMON = ["--data", "digits", "--fraction", "0.1", "--quiet", "--batch-size", "32"]


def train(out, *extra):
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = main(["train", MLP, "--out", str(out), *COMMON, *extra])
    if code != 0:
        raise SystemExit(f"pcgraph train {' '.join(extra)} exited {code}: {err.getvalue()}")


def evaluate(run, *extra):
    """``pcgraph eval --json`` of a run directory (on this process's devices): its JSON."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["eval", MLP, "--checkpoint", str(run), "--json", "--split", "train",
                     "--batch-size", "40", *extra])
    if code != 0:
        raise SystemExit(f"pcgraph eval {' '.join(extra)} exited {code}: {err.getvalue()}")
    return json.loads(out.getvalue())


def leaves(ckpt, model=MLP):
    """Parameters and optimiser state of a checkpoint of ``model``, read on ONE device."""
    import equinox as eqx
    import optax

    from pcgraph._checkpoint import load
    from pcgraph import load as load_model, build

    net = build(load_model(model), seed=0)
    like_opt = optax.adam(1e-3).init(eqx.filter(net, eqx.is_inexact_array))
    net, opt_state, _, meta = load(ckpt, net, like_opt, None)
    return [np.asarray(x) for x in jax.tree_util.tree_leaves((net, opt_state))], meta


def diff(a, b):
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b) if x.size)


def main_() -> None:
    root = Path(sys.argv[1])
    train(root / "ref", "--epochs", "2")
    train(root / "a", "--epochs", "1", "--devices", "8")
    train(root / "a", "--epochs", "2", "--resume")
    train(root / "b", "--epochs", "1")
    train(root / "b", "--epochs", "2", "--resume", "--mesh", "data=2,layer=4")
    ref, mref = leaves(root / "ref" / "checkpoint.eqx")
    a, ma = leaves(root / "a" / "checkpoint.eqx")
    b, mb = leaves(root / "b" / "checkpoint.eqx")
    evals = {k: evaluate(root / "ref", *extra) for k, extra in (
        ("one", ()), ("devices=8", ("--devices", "8")), ("data=2,layer=4", ("--mesh",
                                                                          "data=2,layer=4")))}
    print(json.dumps({"sharded_then_one": diff(ref, a), "one_then_sharded": diff(ref, b),
                      "steps": [mref["step"], ma["step"], mb["step"]], "eval": evals}))


if __name__ == "__main__":
    main_()
