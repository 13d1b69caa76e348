"""``precision = bf16``: bf16 weights and activities, fp32 energies and matmul accumulation."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pcgraph import build, data, energy, fit, load, make_train_step, ConfigError
from pcgraph._config import precision_dtype
from pcgraph._learn import compute_cast
from pcgraph import infer
from pcgraph._infer import clamp_data
from pcgraph import initialise, compile_query

MODELS = Path(__file__).resolve().parent.parent / "models"


@pytest.fixture(scope="module")
def mlp():
    return load(MODELS / "digits_mlp.pcg")


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", fraction=0.3)


def test_precision_names():
    assert precision_dtype("fp32") is None and precision_dtype("bf16") == jnp.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        precision_dtype("fp8")


def test_bf16_energy_is_fp32_and_close_to_the_fp32_model(mlp, digits):
    net32 = build(mlp, seed=0)
    net16 = compute_cast("bf16")(net32)
    assert net16.dtype == jnp.bfloat16
    assert all(a.dtype == jnp.bfloat16 for a in jax.tree_util.tree_leaves(net16.params))
    q = compile_query(net32, "train")
    batch = {"x": digits.x_train[:64], "y": digits.one_hot(digits.y_train[:64])}
    out = {}
    for name, net in (("fp32", net32), ("bf16", net16)):
        h = clamp_data(net, q, batch)
        h0 = initialise(net, q, h)
        F0 = energy(net, h0, q)
        res = infer(net, q, h0)
        out[name] = (F0, res)
        dt = jnp.bfloat16 if name == "bf16" else jnp.float32
        assert all(a.dtype == dt for a in h0) and all(a.dtype == dt for a in res.h)
        assert F0.dtype == jnp.float32 and res.energies.dtype == jnp.float32
    # bf16 keeps 8 bits of mantissa: relative error ~2^-8 per value, averaged over a batch
    F32, F16 = float(out["fp32"][0]), float(out["bf16"][0])
    assert F16 == pytest.approx(F32, rel=2e-2)
    e32, e16 = np.asarray(out["fp32"][1].energies), np.asarray(out["bf16"][1].energies)
    np.testing.assert_allclose(e16, e32, rtol=5e-2)
    assert e16[-1] < e16[0]  # inference still descends


def test_bf16_train_step_and_fit(mlp, digits):
    net = build(mlp, seed=0)
    step = make_train_step(net, "train", precision="bf16")
    batch = {"x": digits.x_train[:32], "y": digits.one_hot(digits.y_train[:32])}
    s0 = step.init(net)
    new, s1, m = step(net, s0, batch)
    # mixed precision: fp32 master weights and optimiser state, fp32 energies ...
    assert new.dtype == jnp.float32 and m["energy_end"].dtype == jnp.float32
    assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(s1)
               if jnp.issubdtype(a.dtype, jnp.floating))
    # ... bf16 weights inside (the inference loop reads them), fp32 activities
    jaxpr = str(jax.make_jaxpr(step.traced)(net, s0, batch, None, None))
    assert "dot_general" in jaxpr and "bf16[" in jaxpr and "f32[32,64]" in jaxpr
    assert "bf16" not in str(jax.make_jaxpr(make_train_step(net, "train").traced)(
        net, s0, batch, None, None))
    res = fit(build(mlp, seed=0), digits, epochs=2, batch_size=64, precision="bf16",
              trace_inference=False)
    assert res.config["precision"] == "bf16"
    assert res.history[-1]["energy"] < res.history[0]["energy"]
    assert res.final["test_accuracy"] > 0.5
