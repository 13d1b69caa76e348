"""Every name the validator accepts is one the engine can build, and the other way round."""

import pytest

from pcgraph import _infer, _network, _vocab
from pcgraph._diagnostics import PcgError
from pcgraph._load import load


def test_registries_match_the_language():
    assert _vocab.ACTIVATIONS == set(_network.ACTIVATIONS)
    assert _vocab.WEIGHT_INITS == {"default", *_network.WEIGHT_INITS}
    assert _vocab.PARAMETERISATIONS == set(_network.PARAMETERISATIONS)
    assert _vocab.SOLVERS == set(_infer.SOLVERS)


def test_unknown_weight_init_is_a_diagnostic():
    text = "model m {\n  node x: [4]\n  node y: [2]\n  x -> y : dense(init = xavierr)\n  query q { clamp x }\n}\n"
    with pytest.raises(PcgError) as err:
        load(text)
    msg = str(err.value)
    assert "4:25: error: edge x -> y: weight init 'xavierr' is unknown" in msg
    assert "did you mean 'xavier'?" in msg
