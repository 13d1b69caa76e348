"""Every example model in ``models/`` builds and runs training steps through the public API.

Random data of the right shapes is bound to the training query's clamped nodes (a tiny batch and
two inference steps keep the 128-layer and convolutional models cheap); the test asserts that the
energy is finite, that the step is traced once, and that the parameters changed.
"""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import pcgraph

MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.pcg"))


def _data(model, query="train", n=8, seed=0):
    q = next(q for q in model.queries if q.name == query)
    nodes = {v.name: v for v in model.nodes}
    rng = np.random.default_rng(seed)
    out = {}
    for c in q.clamp:
        node = nodes[c]
        if node.energy.kind == "categorical":
            out[c] = np.eye(node.shape[-1], dtype=np.float32)[rng.integers(0, node.shape[-1], n)]
        else:
            out[c] = rng.uniform(0.0, 1.0, (n, *node.shape)).astype(np.float32)
    return out


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_model_builds_and_trains(path):
    model = pcgraph.load(path)
    net = pcgraph.build(model, seed=0)
    res = pcgraph.fit(net, _data(model), epochs=1, batch_size=4, steps=2, eval_data=False)
    assert res.traces == 1
    hist = res.final
    assert np.isfinite(hist["energy"]) and np.isfinite(hist["train_loss"])
    before = jax.tree_util.tree_leaves(net.named_params())
    after = jax.tree_util.tree_leaves(res.net.named_params())
    assert len(before) == len(after) > 0
    assert any(not jnp.array_equal(a, b) for a, b in zip(before, after))


MASKED = [(p, q.name) for p in MODELS for q in pcgraph.load(p).queries if q.partial]


@pytest.mark.parametrize(
    "path,query",
    [pytest.param(p, q, marks=[pytest.mark.slow] if p.stem == "conv_decoder" else [],
                  id=f"{p.stem}-{q}") for p, q in MASKED])
def test_masked_model_trains_and_answers_through_the_cli(path, query, tmp_path, capsys):
    """Each model with a `clamp img where mask` query trains on Fashion-MNIST through `pcgraph
    train` and is scored on its masked query (`--test-query Q --mask half`): the MSE on the missing
    bottom half is finite and below the mean-fill scale of unit-range pixels."""
    import json

    from pcgraph._cli import main

    assert main(["train", str(path), "--data", "fashion-mnist", "--normalize", "unit",
                 "--fraction", "0.01", "--epochs", "1", "--steps", "2", "--test-query", query,
                 "--mask", "half", "--out", str(tmp_path / "run"), "--quiet", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["steps"] > 0 and 0 < got["test_mse"] < 1
