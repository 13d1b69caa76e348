"""IR → ``networkx.DiGraph``.

Nodes carry their ``NodeIR`` under the attribute ``ir``; energy edges (``->``) carry their ``EdgeIR``
under ``ir``. Amortised edges (``~>``) are not part of the energy and so not part of this graph: they
are kept in ``G.graph["amortised"]`` (a tuple of ``EdgeIR``). Names must already be resolved (the
validator reports undefined names first): ``add_edge`` would silently create undeclared nodes, so
this function refuses them.
"""

from __future__ import annotations

import networkx as nx

from ._ir import ModelIR


def to_graph(model: ModelIR) -> nx.DiGraph:
    G = nx.DiGraph(name=model.name, amortised=tuple(model.amortised))
    for n in model.nodes:
        G.add_node(n.name, ir=n)
    for e in model.edges:
        if e.src not in G or e.dst not in G:
            missing = e.src if e.src not in G else e.dst
            raise KeyError(f"edge {e.key} names undeclared node {missing!r}")
        G.add_edge(e.src, e.dst, ir=e)
    return G


def natural_key(name: str) -> tuple:
    """Sort key that orders ``h2`` before ``h10`` (declaration order never matters)."""
    import re

    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))
