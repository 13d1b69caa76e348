"""Draw a model's topology with matplotlib (Agg backend) and a networkx graph.

Layout: nodes are layered left to right by the topological generations of the graph's
condensation (strongly connected components collapsed), so a DAG is drawn as layers and a cyclic
graph as layers of cycles, each cycle's nodes on a small ring. Long graphs (more layers than fit in
a row, e.g. a 128-layer residual network) are wrapped into a serpentine grid of rows, so every node
stays legible.

Edges are routed (``edge_routes``): a straight line where it passes no other node, else a detour
along a free horizontal lane above or below the nodes in between, so an edge that skips a layer
(``z -> h2`` past ``h1``, a skip ``x -> h2``) is never hidden behind a node.

Style: edge terms are drawn by kind (dense solid black, identity skip dashed grey, conv in a
distinct colour, anything else solid), amortised ``~>`` edges dotted green; edges that lie on a
cycle are red. Node colours show the roles of a query: clamped (blue), read out (orange), free
(white). Every node is labelled with its name and shape.

No JAX is imported here.
"""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx

from ._graph import natural_key, to_graph
from ._ir import EdgeIR, ModelIR, TermIR

CLAMPED = "#4f81bd"
READ = "#f0a030"
FREE = "#ffffff"
NO_QUERY = "#dddddd"
CYCLE = "#d62728"
CONV = "#8e44ad"
AMORTISED = "#2ca02c"

# how many layers fit on one row before the layout wraps into a grid
MAX_COLS = 12


def term_kind(term: TermIR) -> str:
    """``conv`` | ``dense`` | ``identity`` | ``other``: the kind that decides how a term is drawn."""
    kinds = [t.kind for t in term.chain]
    if "conv" in kinds:
        return "conv"
    if "dense" in kinds:
        return "dense"
    if all(k == "identity" for k in kinds):
        return "identity"
    return "other"


def _term_style(kind: str) -> dict:
    if kind == "identity":
        return {"style": "dashed", "color": "#777777"}
    if kind == "conv":
        return {"style": "solid", "color": CONV}
    return {"style": "solid", "color": "#222222"}


def cycle_edges(G: nx.DiGraph) -> set[tuple[str, str]]:
    """Edges that lie on a directed cycle: both ends in one non-trivial SCC, or self-loops."""
    comp = {}
    for i, scc in enumerate(nx.strongly_connected_components(G)):
        for n in scc:
            comp[n] = (i, len(scc))
    out = set()
    for u, v in G.edges:
        if u == v or (comp[u][0] == comp[v][0] and comp[u][1] > 1):
            out.add((u, v))
    return out


def layout(G: nx.DiGraph, max_cols: int = MAX_COLS) -> dict[str, tuple[float, float]]:
    """Positions: layers from the condensation's topological generations, cycles on rings,
    wrapped into a serpentine grid when there are more than ``max_cols`` layers."""
    if G.number_of_nodes() == 0:
        return {}
    C = nx.condensation(G)
    members = C.graph["mapping"]  # node -> scc index
    scc_nodes: dict[int, list[str]] = {}
    for n, c in members.items():
        scc_nodes.setdefault(c, []).append(n)
    for c in scc_nodes:
        scc_nodes[c].sort(key=natural_key)
    gens = [sorted(g, key=lambda c: natural_key(scc_nodes[c][0])) for g in nx.topological_generations(C)]

    # each layer: a column of "slots"; an SCC of k>1 nodes takes a ring of radius r
    n_layers = len(gens)
    cols = min(n_layers, max_cols)
    pos: dict[str, tuple[float, float]] = {}
    row_height = 0.0
    # height of each layer in slots (so rows of the grid do not overlap)
    def slot_height(c):
        k = len(scc_nodes[c])
        return 1.0 if k == 1 else max(1.6, 0.55 * k)

    layer_heights = [sum(slot_height(c) for c in g) for g in gens]
    row_height = max(layer_heights) + 1.0
    for li, g in enumerate(gens):
        row, col = divmod(li, cols)
        if row % 2 == 1:  # serpentine: odd rows run right to left
            col = cols - 1 - col
        x0 = col * 2.0
        y_top = -row * row_height
        total = layer_heights[li]
        y = y_top + total / 2.0
        for c in g:
            h = slot_height(c)
            yc = y - h / 2.0
            nodes = scc_nodes[c]
            if len(nodes) == 1:
                pos[nodes[0]] = (x0, yc)
            else:
                r = h / 2.0 - 0.2
                for j, n in enumerate(nodes):
                    a = math.pi / 2 + 2 * math.pi * j / len(nodes)
                    pos[n] = (x0 + 0.6 * r * math.cos(a), yc + r * math.sin(a))
            y -= h
    return pos


# clearance around a node centre that an edge it does not touch keeps (data units; a node's disc
# is about 0.2 wide at the default scale)
NODE_R = 0.3
Point = tuple[float, float]


def _seg_dist(p: Point, a: Point, b: Point) -> float:
    """Distance from ``p`` to the segment ``a``-``b``."""
    ax, ay = a
    bx, by = b
    dx, dy = bx - ax, by - ay
    L2 = dx * dx + dy * dy
    t = 0.0 if L2 == 0 else max(0.0, min(1.0, ((p[0] - ax) * dx + (p[1] - ay) * dy) / L2))
    return math.hypot(p[0] - (ax + t * dx), p[1] - (ay + t * dy))


def crossings(route: list[Point], pos: dict[str, Point], ends: tuple[str, str],
              clearance: float = NODE_R) -> list[str]:
    """The nodes (other than ``ends``) that a polyline passes within ``clearance`` of."""
    return [n for n, p in pos.items() if n not in ends
            and any(_seg_dist(p, a, b) < clearance for a, b in zip(route, route[1:]))]


def _offset(a: Point, b: Point, d: float) -> list[Point]:
    """The straight a-b bent sideways by ``d`` at its middle (a three-point polyline)."""
    if d == 0:
        return [a, b]
    mx, my = (a[0] + b[0]) / 2, (a[1] + b[1]) / 2
    L = math.hypot(b[0] - a[0], b[1] - a[1]) or 1.0
    nx_, ny_ = -(b[1] - a[1]) / L, (b[0] - a[0]) / L
    return [a, (mx + d * nx_, my + d * ny_), b]


def route_edge(u: str, v: str, pos: dict[str, Point], bend: float = 0.0,
               lanes: list | None = None) -> list[Point]:
    """A polyline from ``u`` to ``v`` that passes no other node: the straight line (bent by
    ``bend``) when it is clear, else a detour along a horizontal lane above or below the nodes in
    between (edges that skip layers), the nearest clear lane first. ``lanes`` collects the lanes
    taken, so two detours over the same stretch do not share one."""
    a, b = pos[u], pos[v]
    straight = _offset(a, b, bend)
    if not crossings(straight, pos, (u, v)):
        return straight
    lanes = lanes if lanes is not None else []
    x0, x1 = sorted((a[0], b[0]))
    dx = 0.45 if b[0] >= a[0] else -0.45
    if abs(b[0] - a[0]) < 1e-9:
        dx = 0.0
    for k in range(1, 60):
        for sign in (1, -1):
            y = (max(a[1], b[1]) if sign > 0 else min(a[1], b[1])) + sign * (0.55 * k)
            if any(abs(y - ly) < 0.2 and not (x1 < lx0 or x0 > lx1) for ly, lx0, lx1 in lanes):
                continue
            if dx == 0.0:  # same column: go out sideways
                side = 0.6 * k
                path = [a, (a[0] + side, a[1]), (a[0] + side, b[1]), b]
            else:
                path = [a, (a[0] + dx, y), (b[0] - dx, y), b]
            if not crossings(path, pos, (u, v)):
                lanes.append((y, x0, x1))
                return path
    return straight  # nothing better (cannot happen on a finite layout)


def _trim(route: list[Point], r0: float, r1: float) -> list[Point]:
    """Shorten a polyline by ``r0`` at its start and ``r1`` at its end (arrows stop at the disc)."""
    def move(p, q, d):
        L = math.hypot(q[0] - p[0], q[1] - p[1])
        if L <= d or L == 0:
            return p
        return (p[0] + (q[0] - p[0]) * d / L, p[1] + (q[1] - p[1]) * d / L)

    out = list(route)
    out[0] = move(out[0], out[1], r0)
    out[-1] = move(out[-1], out[-2], r1)
    return out


def edge_routes(model: ModelIR, pos: dict[str, Point] | None = None,
                max_cols: int = MAX_COLS) -> list[dict]:
    """Every drawn edge term as ``{"src", "dst", "kind", "amortised", "route": [points]}``, in
    drawing order: the routes :func:`draw` draws (self-loops excluded)."""
    G = to_graph(model)
    pos = layout(G, max_cols=max_cols) if pos is None else pos
    lanes: list = []
    out = []
    for u, v, data in G.edges(data=True):
        if u == v:
            continue
        e: EdgeIR = data["ir"]
        reverse = G.has_edge(v, u)
        for j, term in enumerate(e.terms):
            bend = 0.18 * j + (0.15 if reverse else 0.0)
            out.append({"src": u, "dst": v, "kind": term_kind(term), "amortised": False,
                        "route": route_edge(u, v, pos, bend, lanes)})
    for e in model.amortised:
        if e.src in pos and e.dst in pos and e.src != e.dst:
            out.append({"src": e.src, "dst": e.dst, "kind": "amortised", "amortised": True,
                        "route": route_edge(e.src, e.dst, pos, -0.2, lanes)})
    return out


def _roles(model: ModelIR, query: str | None) -> tuple[str | None, dict[str, str]]:
    if query is None:
        names = [q.name for q in model.queries]
        if not names:
            return None, {}
        query = "train" if "train" in names else names[0]
    q = model.query(query)  # KeyError with the list of queries if unknown
    roles = {n.name: "free" for n in model.nodes}
    for n in q.clamp:
        roles[n] = "clamped"
    for n in q.read:
        roles[n] = "read"
    return query, roles


def _shape_str(shape) -> str:
    return "[" + ",".join(str(s) for s in shape) + "]"


def draw(
    model: ModelIR,
    out: str | Path,
    *,
    query: str | None = None,
    title: str | None = None,
    max_cols: int = MAX_COLS,
) -> Path:
    """Draw ``model`` to ``out`` (format from the suffix: .png, .svg, .pdf). ``query`` picks the
    node roles to colour (default: ``train`` if the model has it, else its first query)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    G = to_graph(model)
    query, roles = _roles(model, query)
    pos = layout(G, max_cols=max_cols)
    cyc = cycle_edges(G)

    n = max(G.number_of_nodes(), 1)
    routes = edge_routes(model, pos)
    xs = [p[0] for p in pos.values()] + [q[0] for r in routes for q in r["route"]] or [0.0]
    ys = [p[1] for p in pos.values()] + [q[1] for r in routes for q in r["route"]] or [0.0]
    w_units = max(xs) - min(xs) + 2.0
    h_units = max(ys) - min(ys) + 2.0
    scale = 1.1
    fig_w = min(max(5.0, w_units * scale), 40.0)
    fig_h = min(max(3.5, h_units * scale * 0.8), 40.0)
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    big = n > 40

    kinds_seen = _draw_edges(ax, G, pos, routes, cyc, big)
    _draw_nodes(ax, G, pos, roles, big)
    _draw_legend(ax, roles, kinds_seen, bool(model.amortised), bool(cyc))

    t = title or model.name
    if query:
        t += f"  (query: {query})"
    ax.set_title(t)
    ax.set_xlim(min(xs) - 1.0, max(xs) + 1.0)
    ax.set_ylim(min(ys) - 1.0, max(ys) + 1.0)
    ax.set_aspect("auto")
    ax.axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110 if not big else 130, bbox_inches="tight")
    plt.close(fig)
    return out


def _draw_edges(ax, G, pos, routes, cyc, big: bool) -> set[str]:
    """One arrow per term along its route (skip edges detour around the nodes between); returns
    the kinds of term drawn (for the legend)."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as MplPath

    def self_loop(u, color, style, lw=1.4):
        x, y = pos[u]
        ax.add_patch(FancyArrowPatch(
            (x - 0.15, y + 0.2), (x + 0.15, y + 0.2), connectionstyle="arc3,rad=-1.8",
            arrowstyle="-|>", mutation_scale=10, color=color, linestyle=style, lw=lw, zorder=1))

    def polyline(route, color, style, lw=1.4):
        r = 0.17 if not big else 0.1
        pts = _trim(route, r, r)
        codes = [MplPath.MOVETO] + [MplPath.LINETO] * (len(pts) - 1)
        ax.add_patch(FancyArrowPatch(
            path=MplPath(pts, codes), arrowstyle="-|>", mutation_scale=10 if not big else 7,
            color=color, linestyle=style, lw=lw, zorder=1, joinstyle="round"))

    kinds_seen: set[str] = set()
    for u, v, data in G.edges(data=True):
        if u == v:
            for term in data["ir"].terms:
                kind = term_kind(term)
                kinds_seen.add(kind)
                self_loop(u, CYCLE, _term_style(kind)["style"])
    for r in routes:
        if r["amortised"]:
            polyline(r["route"], AMORTISED, "dotted", lw=1.6)
            continue
        kinds_seen.add(r["kind"])
        st = _term_style(r["kind"])
        color = CYCLE if (r["src"], r["dst"]) in cyc else st["color"]
        polyline(r["route"], color, st["style"])
    return kinds_seen


def _draw_nodes(ax, G, pos, roles, big: bool) -> None:
    """Nodes coloured by their role in the query, named, with their shapes (small graphs)."""
    node_size, font = (900, 8) if not big else (380, 5)
    colours = {"clamped": CLAMPED, "read": READ, "free": FREE}
    names = sorted(G.nodes, key=natural_key)
    ax.scatter(
        [pos[v][0] for v in names],
        [pos[v][1] for v in names],
        s=node_size,
        c=[colours[roles[v]] if roles else NO_QUERY for v in names],
        edgecolors="#222222",
        linewidths=1.0,
        zorder=3,
    )
    for v in names:
        ir = G.nodes[v]["ir"]
        x, y = pos[v]
        ax.text(x, y, v, ha="center", va="center", fontsize=font, zorder=4)
        if not big:
            ax.text(x, y - 0.28, _shape_str(ir.shape), ha="center", va="top", fontsize=font - 1,
                    color="#555555", zorder=4)


def _draw_legend(ax, roles, kinds_seen: set[str], amortised: bool, cyclic: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = []
    if roles:
        handles += [
            Patch(facecolor=CLAMPED, edgecolor="#222", label="clamped"),
            Patch(facecolor=FREE, edgecolor="#222", label="free"),
            Patch(facecolor=READ, edgecolor="#222", label="read"),
        ]
    names_k = {"dense": "dense", "identity": "identity skip", "conv": "conv", "other": "other"}
    for k in ("dense", "identity", "conv", "other"):
        if k in kinds_seen:
            st = _term_style(k)
            handles.append(Line2D([], [], color=st["color"], linestyle=st["style"], label=names_k[k]))
    if amortised:
        handles.append(Line2D([], [], color=AMORTISED, linestyle="dotted", label="amortised ~>"))
    if cyclic:
        handles.append(Line2D([], [], color=CYCLE, label="on a cycle"))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8,
                  frameon=False)
