"""The configuration objects and the one resolution of settings into them."""

from __future__ import annotations

import dataclasses
import sys

import optax
import pytest

import pcgraph
from pcgraph import GradientDescent, GradientFlow, Initialisation, resolve_config
from pcgraph._registry import DEFAULT_SETTINGS


def _patch_everywhere(monkeypatch, name, wrapper):
    """Replace ``name`` in every loaded pcgraph module that imported it."""
    import pcgraph._config  # noqa: F401 - loaded before the patch
    import pcgraph._infer

    original = {"resolve_config": pcgraph._config.resolve_config,
                "infer": pcgraph._infer.infer}[name]
    for mod in list(sys.modules.values()):
        if getattr(mod, "__name__", "").startswith("pcgraph") and \
                getattr(mod, name, None) is original:
            monkeypatch.setattr(mod, name, wrapper(original))


def test_a_cli_setting_reaches_the_jitted_loop_through_one_resolution(monkeypatch, tmp_path):
    from pcgraph._cli import main
    import pcgraph._fit  # noqa: F401 - every engine module loaded, so every import is patched
    import pcgraph._evaluate  # noqa: F401

    resolved, seen = [], []

    def counting(f):
        def wrapped(*args, **kw):
            cfg = f(*args, **kw)
            resolved.append(cfg)
            return cfg
        return wrapped

    def spying(f):
        def wrapped(net, query, h0, inference=None, **kw):
            seen.append(inference)  # called while the step is traced (inside jit)
            return f(net, query, h0, inference, **kw)
        return wrapped

    _patch_everywhere(monkeypatch, "resolve_config", counting)
    _patch_everywhere(monkeypatch, "infer", spying)
    rc = main(["train", "models/cyclic_digits.pcg", "--data", "digits", "--epochs", "1",
               "--fraction", "0.1", "--steps", "3", "--activity-lr", "0.05",
               "--batch-size", "32", "--out", str(tmp_path / "run"), "--quiet",
               "--init-option", "mem_patterns=8"])
    assert rc == 0
    assert len(resolved) == 1  # the CLI's; fit, the step and the evaluation take the objects
    inference = resolved[0].inference
    assert inference.steps == 3
    # every relaxation (training, memory reference, evaluation, trace) uses the resolved
    # optimiser object; the training step and the evaluation get the very inference object
    assert seen and all(s.optimizer is inference.optimizer for s in seen)
    assert {s.steps for s in seen} == {3, 100}  # T, and the memories' reference relaxation
    assert sum(s is inference for s in seen) >= 2
    assert resolved[0].record["activity_lr"] == 0.05


def test_defaults_are_the_registry_s():
    cfg = resolve_config(None)
    assert cfg.inference.steps == DEFAULT_SETTINGS["steps"] == GradientDescent().steps
    assert cfg.epochs == DEFAULT_SETTINGS["epochs"] and cfg.init == Initialisation()
    assert GradientFlow().dt == DEFAULT_SETTINGS["activity_lr"]
    assert cfg.record == {**DEFAULT_SETTINGS, "algorithm": "pc"}


def test_the_objects_are_frozen_and_hashable():
    gd = GradientDescent(5, optax.sgd(0.1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        gd.steps = 6
    init = Initialisation("mem", {"b": "zero", "a": "forward"}, {"mem_patterns": 8})
    assert init.nodes == (("a", "forward"), ("b", "zero"))
    assert hash(init) == hash(Initialisation("mem", {"a": "forward", "b": "zero"},
                                             {"mem_patterns": 8}))
    hash(GradientFlow())


def test_settings_and_objects_are_exclusive_in_fit():
    net = pcgraph.build(pcgraph.load("models/digits_mlp.pcg"))
    with pytest.raises(TypeError, match="not both"):
        pcgraph.fit(net, {}, resolve_config(None), steps=3)


def test_gradient_flow_rejects_adaptive_euler():
    import diffrax

    with pytest.raises(pcgraph.ConfigError, match="Euler"):
        GradientFlow(diffrax.Euler(), stepsize_controller=diffrax.PIDController(rtol=1e-3, atol=1e-6))
