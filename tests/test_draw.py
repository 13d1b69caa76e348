"""``pcgraph draw`` / ``_draw`` and ``pcgraph plot`` / ``_plot``."""

from __future__ import annotations

import json


from pcgraph._cli import main
from pcgraph._draw import cycle_edges, layout
from pcgraph import to_graph, load

PNG = b"\x89PNG\r\n\x1a\n"


def _png_ok(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000


def test_draw_mlp_png_and_svg(models_dir, tmp_path):
    out = tmp_path / "mlp.png"
    assert main(["draw", str(models_dir / "digits_mlp.pcg"), "-o", str(out)]) == 0
    _png_ok(out)
    svg = tmp_path / "mlp.svg"
    assert main(["draw", str(models_dir / "digits_mlp.pcg"), "-o", str(svg), "--query", "test"]) == 0
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text


def test_draw_cyclic_highlights_cycle(models_dir, tmp_path):
    m = load(models_dir / "cyclic_digits.pcg")
    assert cycle_edges(to_graph(m)) == {("a", "b"), ("b", "a")}
    out = tmp_path / "cyc.png"
    assert main(["draw", str(models_dir / "cyclic_digits.pcg"), "-o", str(out)]) == 0
    _png_ok(out)


def test_draw_hybrid_and_conv(models_dir, tmp_path):
    for name in ("hybrid", "conv_mnist"):
        out = tmp_path / f"{name}.png"
        assert main(["draw", str(models_dir / f"{name}.pcg"), "-o", str(out)]) == 0
        _png_ok(out)


def test_deep_loop_is_wrapped_into_a_grid(models_dir, tmp_path):
    m = load(models_dir / "resnet128.pcg")
    pos = layout(to_graph(m))
    xs = {round(p[0], 3) for p in pos.values()}
    ys = {round(p[1], 3) for p in pos.values()}
    assert len(pos) == 129
    assert len(xs) <= 12 and len(ys) >= 10  # a serpentine grid, not a 129-wide line
    # every node has its own position
    assert len({(round(x, 3), round(y, 3)) for x, y in pos.values()}) == len(pos)
    out = tmp_path / "deep.png"
    assert main(["draw", str(models_dir / "resnet128.pcg"), "-o", str(out)]) == 0
    _png_ok(out)


def test_draw_errors(models_dir, tmp_path, capsys):
    assert main(["draw", str(models_dir / "digits_mlp.pcg"), "-o", str(tmp_path / "x.png"),
                 "--query", "nope"]) == 2
    assert "no query 'nope'" in capsys.readouterr().err
    bad = tmp_path / "bad.pcg"
    bad.write_text("model m { node x: [3]\n x -> y : dense }\n")
    assert main(["draw", str(bad), "-o", str(tmp_path / "x.png")]) == 1
    assert main(["draw", str(models_dir / "digits_mlp.pcg"), "-o", str(tmp_path / "x.txt")]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_plot_from_metrics(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    recs = []
    for e in range(1, 4):
        recs.append({"type": "step", "epoch": e, "step": (e - 1) * 10 + 1, "energy": 3.0 / e,
                     "loss": 2.0 / e})
        recs.append({"type": "epoch", "epoch": e, "step": 10 * e, "energy": 2.0 / e,
                     "train_loss": 1.0 / e, "train_accuracy": 0.5 + 0.1 * e,
                     "test_accuracy": 0.45 + 0.1 * e, "smm_per_update": 23})
    recs.append({"type": "inference", "epoch": 3, "node_energies": {"h1": [0.0, 0.1, 0.2],
                                                                     "y": [1.0, 0.8, 0.7]}})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"trunc')
    out = tmp_path / "curves.png"
    assert main(["plot", str(run), "-o", str(out)]) == 0
    _png_ok(out)
    assert main(["plot", str(tmp_path / "nothing"), "-o", str(out)]) == 2
    assert "no metrics file" in capsys.readouterr().err


SKIPS = """
model skips {
  node x: [8]
  node h1, h2, h3: [8] act = tanh
  node y: [3] energy = categorical
  x -> h1 -> h2 -> h3 -> y : dense
  x -> h2 : dense
  x -> h3 : dense
  h1 -> h3 : dense + identity
  y ~> h1 : dense
  query train { clamp x, y }
  query test { clamp x; read y }
}
"""


def _assert_routes_clear(model):
    from pcgraph._draw import NODE_R, crossings, edge_routes

    pos = layout(to_graph(model))
    routes = edge_routes(model, pos)
    for r in routes:
        # every segment keeps clear of every node the edge does not touch
        assert crossings(r["route"], pos, (r["src"], r["dst"])) == [], r
        assert r["route"][0] == pos[r["src"]] and r["route"][-1] == pos[r["dst"]]
    # the clearance is larger than the drawn disc and the check is not vacuous: the straight
    # line of a skip edge does pass through the node it skips
    assert NODE_R >= 0.25
    return pos, routes


def test_skip_edges_are_routed_around_the_nodes_they_pass(tmp_path):
    from pcgraph._draw import crossings

    m = load(SKIPS)
    pos, routes = _assert_routes_clear(m)
    assert crossings([pos["x"], pos["h3"]], pos, ("x", "h3")) == ["h1", "h2"]
    assert crossings([pos["y"], pos["h1"]], pos, ("y", "h1")) == ["h2", "h3"]
    detours = [r for r in routes if len(r["route"]) > 3]
    # x->h2, x->h3, both terms of h1->h3 and y~>h1 detour; two terms never share a route
    assert len(detours) == 5
    assert len({tuple(r["route"]) for r in routes}) == len(routes)
    out = tmp_path / "skips.png"
    from pcgraph._draw import draw

    draw(m, out)
    _png_ok(out)


def test_every_model_draws_clear_edges(models_dir):
    for name in ("hybrid", "decoder", "resnet", "cyclic_digits", "conv_mnist", "digits_mlp"):
        _assert_routes_clear(load(models_dir / f"{name}.pcg"))
