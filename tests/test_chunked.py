"""Chunked dispatch (``_chunked``): ``K`` steps per dispatch give the parameters of ``K = 1``,
the same events and the same divergence diagnosis; the automatic ``K``."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from pcgraph import TrainingDiverged, build, data, fit, load
from pcgraph._chunked import steps_per_dispatch
from pcgraph._registry import AUTO_DISPATCH_BYTES, AUTO_STEPS_PER_DISPATCH, DEFAULT_SETTINGS

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", fraction=0.5)  # 718 training examples: 11 batches of 64


@pytest.fixture(scope="module")
def mlp():
    return load(MODELS / "digits_mlp.pcg")


def _leaves(res):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(res.net.named_params())]


def _run(mlp, digits, k, **kw):
    events = []
    res = fit(build(mlp, seed=0), digits, epochs=2, batch_size=64, seed=3, steps=4,
              steps_per_dispatch=k, eval_data=False, trace_inference=False,
              callback=events.append, **kw)
    return res, [e for e in events if e["kind"] == "step"]


@pytest.mark.parametrize("k", [0, 4, 11])
def test_chunks_give_the_parameters_of_single_steps(mlp, digits, k):
    base, base_steps = _run(mlp, digits, 1)
    res, steps = _run(mlp, digits, k)
    assert base.config["steps_per_dispatch"] == 1
    # auto: the whole 11-step epoch in one dispatch; 4 leaves a 3-step last chunk (2 programs)
    assert res.config["steps_per_dispatch"] == {0: 11, 4: 4, 11: 11}[k]
    assert res.traces == (2 if k == 4 else 1)
    # The same step function, scanned: XLA compiles the step inside a loop, which may fuse (and
    # round) differently from the lone step, so equality is to float32 tolerance, not bitwise
    # (on this CPU it is bitwise; asserted loosely so a different XLA cannot flake the test).
    for a, b in zip(_leaves(base), _leaves(res)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert [e["step"] for e in steps] == [e["step"] for e in base_steps] == list(range(1, 23))
    for e, f in zip(steps, base_steps):
        assert (e["epoch"], e["batch"]) == (f["epoch"], f["batch"])
        assert e["energy"] == pytest.approx(f["energy"], rel=1e-4)
    for h, g in zip(res.history, base.history):
        assert h["energy"] == pytest.approx(g["energy"], rel=1e-5)
        assert h["ms_per_step"] > 0


def test_stateful_init_carries_through_chunks(mlp, digits):
    base, _ = _run(mlp, digits, 1, init="null")
    res, _ = _run(mlp, digits, 0, init="null")
    for a, b in zip(_leaves(base), _leaves(res)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(base.state.carry),
                    jax.tree_util.tree_leaves(res.state.carry)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)


def test_divergence_inside_a_chunk_names_step_and_node(mlp, digits):
    found = {}
    for k in (1, 11):
        with pytest.raises(TrainingDiverged) as info:
            fit(build(mlp, seed=0), digits, epochs=1, batch_size=64, activity_lr=100.0,
                steps=30, steps_per_dispatch=k, eval_data=False)
        found[k] = info.value
    e = found[11]
    assert e.step == found[1].step == 1 and e.epoch == 1
    assert e.nodes == found[1].nodes and set(e.nodes) <= {"h1", "h2", "y"}
    assert "step 1" in str(e) and e.nodes[0] in str(e)


def test_automatic_steps_per_dispatch():
    assert DEFAULT_SETTINGS["steps_per_dispatch"] == 0  # automatic
    cap = AUTO_STEPS_PER_DISPATCH
    assert steps_per_dispatch(0, 11, 1000) == 11  # the whole epoch fits
    assert steps_per_dispatch(0, 22 * cap, 1000) == cap  # a divisor at the cap
    assert steps_per_dispatch(0, 937, 1000) == cap  # prime: a shorter last chunk
    assert steps_per_dispatch(0, 2 * 3 * 19 * 10, 1000) in range(cap // 2, cap + 1)
    assert steps_per_dispatch(0, 1000, AUTO_DISPATCH_BYTES // 4) == 4  # bounded by memory
    assert steps_per_dispatch(0, 1000, 1000, sharded=True) == 1
    assert steps_per_dispatch(7, 1000, 1000) == 7 and steps_per_dispatch(50, 20, 1) == 20
