"""format_model: canonical text that parses back to the same IR and the same graph."""

import pytest

from pcgraph import format_model
from pcgraph._format import format_value
from pcgraph import to_graph
from pcgraph import (
    EdgeIR, EnergyIR, ModelIR, NodeIR, PriorIR, QueryIR, SettingsIR, TermIR, TransformIR,
)
from pcgraph import load, parse_model


def comparable(m: ModelIR) -> ModelIR:
    """The IR with parameters reduced to (name, value): after formatting every value is already
    substituted, so no parameter is read any more and ``used`` cannot survive the round trip."""
    return m.replace(params=tuple((p.name, p.value) for p in m.params))


def graph_key(m: ModelIR):
    G = to_graph(m)
    return (sorted(G.nodes(data="ir")),
            sorted((u, v, d["ir"]) for u, v, d in G.edges(data=True)),
            G.graph["amortised"])


def round_trip(m: ModelIR) -> ModelIR:
    text = format_model(m)
    m2 = parse_model(text, m.source)
    assert comparable(m2) == comparable(m)
    assert graph_key(m2) == graph_key(m)
    assert format_model(m2) == text  # idempotent
    return m2


def test_every_model_round_trips(models_dir):
    paths = sorted(models_dir.glob("*.pcg"))
    assert len(paths) >= 9
    for path in paths:
        round_trip(load(path, validate=False))


def test_round_trip_of_every_construct():
    m = parse_model(
        "param n = 3\n"
        "block b(s, d) { s -> d : dense(pre = relu, bias = false, init = normal) + identity }\n"
        "model everything {\n"
        "  param w = 2 * n\n"
        "  settings { parameterisation = mupc; steps = w; activity_lr = 0.5; weight_decay = 1e-05;"
        " seed = -1; note = \"two words\"; flag = true }\n"
        "  node img: [1, 8, 8]\n"
        "  for i in 1..n { node h{i}: [w] act = tanh init = mem }\n"
        "  node y: [4] energy = gaussian(precision = 2.5) prior = gaussian(-1, 0.5)\n"
        "  node c: [4] energy = categorical\n"
        "  img -> h1 : conv(out = 2, kernel = 3, padding = same) |> maxpool(2, stride = 2) "
        "|> flatten |> dense\n"
        "  for i in 2..n { use b(h{i-1}, h{i}) }\n"
        "  {h2, h3} -> y : dense + dense(out = 4, pre = gelu)\n"
        "  h3 -> c : avgpool(window = 1) + identity(pre = tanh)\n"
        "  img ~> h3 : flatten |> dense(pre = tanh)\n"
        "  query train { clamp img, y, c }\n"
        "  query test { clamp img; read y, c; init h1 = forward; init h2 = mem }\n"
        "  query empty { }\n"
        "}\n", "x.pcg")
    m2 = round_trip(m)
    assert m2.settings.get("note") == "two words" and m2.settings.get("flag") is True
    assert m2.node("y").prior == PriorIR("gaussian", -1.0, 0.5)


def test_canonical_text():
    m = parse_model("model m { node x: [2]; node y: [3] act = relu\n"
                    "x -> y : maxpool(2) |> flatten |> dense(pre = relu, bias = false)\n"
                    "query q { read y; clamp x } }")
    assert format_model(m) == (
        "model m {\n"
        "  node x: [2]\n"
        "  node y: [3] act = relu\n"
        "  x -> y : maxpool(2) |> flatten |> dense(pre = relu, bias = false)\n"
        "  query q { clamp x; read y }\n"
        "}\n"
    )


def test_format_ir_built_in_python():
    m = ModelIR(
        name="api",
        nodes=(NodeIR("a", (3,)), NodeIR("b", (3,), act="tanh", energy=EnergyIR("gaussian", 3.0))),
        edges=(EdgeIR("a", "b", (TermIR((TransformIR("identity"),), pre="relu"),)),),
        queries=(QueryIR("q", clamp=("a",)),),
        settings=SettingsIR((("steps", 4),)),
        source="api.pcg",
    )
    text = format_model(m)
    assert "a -> b : identity(pre = relu)" in text
    assert parse_model(text, "api.pcg") == m


@pytest.mark.parametrize("value,text", [(3, "3"), (0.1, "0.1"), (1e-05, "1e-05"), (True, "true"),
                                        (False, "false"), ("relu", "relu"), ("a b", '"a b"'),
                                        (-2, "-2"), ("true", '"true"')])
def test_format_value(value, text):
    assert format_value(value) == text


def test_unwritable_names_are_refused():
    bad = ModelIR("m", (NodeIR("h-1", (2,)),), ())
    with pytest.raises(ValueError, match="not a valid .pcg name"):
        format_model(bad)
