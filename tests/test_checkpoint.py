"""Atomic checkpoints: round trip, interrupted writes, mismatches."""

from __future__ import annotations

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pcgraph import _checkpoint as ck


class Tiny(eqx.Module):
    w: jax.Array
    b: jax.Array
    act: object = eqx.field(static=True)


def _tree(scale=1.0):
    net = Tiny(scale * jnp.arange(6.0).reshape(3, 2), scale * jnp.ones(2), jnp.tanh)
    opt = optax.adam(1e-3)
    opt_state = opt.init(eqx.filter(net, eqx.is_inexact_array))
    state = {"key": jax.random.key(7), "prev": (scale * jnp.ones(4),)}
    return net, opt_state, state


def _leaves_equal(a, b):
    la = jax.tree_util.tree_leaves(a)
    lb = jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            x, y = jax.random.key_data(x), jax.random.key_data(y)
        assert np.array_equal(np.asarray(x), np.asarray(y))


def test_round_trip(tmp_path):
    net, opt_state, state = _tree(2.0)
    # a non-trivial optimiser state
    grads = jax.tree_util.tree_map(jnp.ones_like, eqx.filter(net, eqx.is_inexact_array))
    _, opt_state = optax.adam(1e-3).update(grads, opt_state)
    meta = {"epoch": 3, "step": 42, "seed": 5, "model_hash": "abc", "lr": np.float32(0.5)}
    path = ck.save(tmp_path / "c.eqx", net, opt_state, state, meta)
    like = _tree(0.0)
    net2, opt2, state2, meta2 = ck.load(path, *like)
    _leaves_equal(net, net2)
    _leaves_equal(opt_state, opt2)
    _leaves_equal(state, state2)
    assert meta2["epoch"] == 3 and meta2["step"] == 42 and meta2["lr"] == 0.5
    assert ck.read_meta(path)["model_hash"] == "abc"
    assert json.loads((tmp_path / "c.json").read_text())["seed"] == 5  # readable sidecar
    assert jax.random.key_data(state2["key"]).tolist() == jax.random.key_data(state["key"]).tolist()


def test_interrupted_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "c.eqx"
    old = _tree(1.0)
    ck.save(path, *old, {"epoch": 1})

    def broken(f, tree, *a, **k):  # writes half the payload, then the "crash"
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(ck.eqx, "tree_serialise_leaves", broken)
    with pytest.raises(OSError, match="simulated"):
        ck.save(path, *_tree(9.0), {"epoch": 2})
    monkeypatch.undo()
    net, opt_state, state, meta = ck.load(path, *_tree(0.0))
    assert meta["epoch"] == 1
    _leaves_equal(net, old[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.eqx", "c.json"]  # no temp files


def test_interrupt_by_keyboard_also_cleans_up(tmp_path, monkeypatch):
    path = tmp_path / "c.eqx"
    ck.save(path, *_tree(1.0), {"epoch": 1})
    monkeypatch.setattr(ck.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ck.save(path, *_tree(3.0), {"epoch": 2})
    monkeypatch.undo()
    assert ck.read_meta(path)["epoch"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_mismatch_and_garbage(tmp_path):
    path = tmp_path / "c.eqx"
    ck.save(path, *_tree(1.0), {"epoch": 1})
    other = Tiny(jnp.zeros((5, 2)), jnp.zeros(2), jnp.tanh)
    opt_state = optax.adam(1e-3).init(eqx.filter(other, eqx.is_inexact_array))
    with pytest.raises(ck.CheckpointError, match="shape"):
        ck.load(path, other, opt_state, _tree(0.0)[2])
    bad = tmp_path / "bad.eqx"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ck.CheckpointError, match="not a pcgraph checkpoint"):
        ck.load(bad, *_tree(0.0))
    with pytest.raises(ck.CheckpointError, match="no such"):
        ck.load(tmp_path / "missing.eqx", *_tree(0.0))
