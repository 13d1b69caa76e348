"""Every name the validator accepts is one the engine can build, and the other way round."""

import pytest

import pcgraph
from pcgraph import PcgError, load, _config, _init, _kernels, _network, _registry


def test_registries_match_the_language():
    assert _registry.ACTIVATIONS == set(_kernels.ACTIVATIONS)
    assert _registry.WEIGHT_INITS == {"default", *_network.WEIGHT_INITS}
    assert set(_registry.ODE_SOLVERS) == set(_config.ODE_SOLVERS)
    assert set(_registry.SOLVERS) == {"gd", *_config.ODE_SOLVERS}
    assert set(_registry.INIT_METHODS) - {"auto"} <= set(_init.INITIALISERS)
    assert set(_registry.STATEFUL_INITS) <= set(_init.INITIALISERS)


@pytest.mark.parametrize("name", _registry.SETTINGS["activity_optimizer"].choices)
def test_every_activity_optimizer_builds(name):
    cfg = pcgraph.resolve_config(None, activity_optimizer=name)
    assert isinstance(cfg.inference, pcgraph.GradientDescent)


@pytest.mark.parametrize("name", _registry.SETTINGS["weight_optimizer"].choices)
def test_every_weight_optimizer_builds_and_the_cli_offers_it(name):
    from pcgraph._cli import build_parser

    pcgraph.resolve_config(None, weight_optimizer=name, weight_decay=0.1)
    args = build_parser().parse_args(["train", "m.pcg", "--data", "digits", "--optimizer", name])
    assert args.optimizer == name


def test_every_solver_resolves_to_its_object():
    import diffrax

    for name in _registry.SOLVERS:
        inf = pcgraph.resolve_config(None, solver=name).inference
        if name == "gd":
            assert isinstance(inf, pcgraph.GradientDescent)
        else:
            assert isinstance(inf, pcgraph.GradientFlow)
            assert isinstance(inf.solver, getattr(diffrax, name.capitalize()))


def test_an_unknown_setting_or_name_is_a_config_error():
    with pytest.raises(pcgraph.ConfigError, match="did you mean 'steps'"):
        pcgraph.resolve_config(None, stepz=3)
    with pytest.raises(pcgraph.ConfigError, match="unknown solver"):
        pcgraph.resolve_config(None, solver="rk4")
    assert issubclass(pcgraph.ConfigError, pcgraph.Error)


def test_unknown_weight_init_is_a_diagnostic():
    text = "model m {\n  node x: [4]\n  node y: [2]\n  x -> y : dense(init = xavierr)\n  query q { clamp x }\n}\n"
    with pytest.raises(PcgError) as err:
        load(text)
    msg = str(err.value)
    assert "4:25: error: edge x -> y: weight init 'xavierr' is unknown" in msg
    assert "did you mean 'xavier'?" in msg
