"""Graph facts, in one place: IR → ``networkx.DiGraph``, cycles, roots, longest paths, the query
graph and Prop. 3.2 (which nodes a forward pass reaches), forward (topological) orders.

Everything else (the validator, the init plan, the engine, the cost accounting) asks this module.

Nodes carry their ``NodeIR`` under the attribute ``ir``; energy edges (``->``) carry their ``EdgeIR``
under ``ir``. Amortised edges (``~>``) are not part of the energy and so not part of this graph: they
are kept in ``G.graph["amortised"]`` (a tuple of ``EdgeIR``). Names must already be resolved (the
validator reports undefined names first): ``add_edge`` would silently create undeclared nodes, so
this function refuses them.
"""

from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import networkx as nx

from ._ir import ModelIR, QueryIR


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


_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple:
    """Sort key that orders ``h2`` before ``h10`` (declaration order never matters). A run of
    digits compares as its number, by (length, digits) without leading zeros: no ``int()``, which
    refuses over 4,300 digits."""
    parts = _DIGITS.split(name)  # text, digits, text, ..., text
    for i in range(1, len(parts), 2):
        d = parts[i].lstrip("0")
        parts[i] = (len(d), d)
    return tuple(parts)


Edge = tuple[str, str]


# --------------------------------------------------------------------------------------- graphs
def energy_graph(model: ModelIR) -> nx.DiGraph:
    """The energy graph (``->`` edges) with nodes and edges in natural-sort order, frozen
    (``nx.freeze``: copy it to change it).

    Unlike ``_graph.to_graph`` it never raises: duplicates collapse and edges that name undeclared
    nodes are dropped. Sorting makes every result independent of declaration order. The graph of
    the last model asked for is kept (the validator and the init plan each ask for it)."""
    ref, G = _LAST_GRAPH
    if ref is not None and ref() is model:
        return G
    G = nx.freeze(_energy_graph(model))
    _LAST_GRAPH[:] = [weakref.ref(model), G]
    return G


_LAST_GRAPH: list = [None, None]  # [weak reference to a ModelIR, its energy graph]


def _energy_graph(model: ModelIR) -> nx.DiGraph:
    G = nx.DiGraph()
    key = {n.name: natural_key(n.name) for n in model.nodes}  # once a name: keys are not cheap
    G.add_nodes_from(sorted(key, key=key.__getitem__))
    edges = {(e.src, e.dst) for e in model.edges if e.src in key and e.dst in key}
    G.add_edges_from(sorted(edges, key=lambda uv: (key[uv[0]], key[uv[1]])))
    return G


def query_graph(G: nx.DiGraph, clamped: Iterable[str]) -> nx.DiGraph:
    """``G`` without the edges into clamped nodes (a clamped value does not depend on its parents)."""
    clamped = set(clamped)
    R = G.copy()
    R.remove_edges_from([(u, v) for u, v in G.edges if v in clamped])
    return R


def _sorted(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


def find_cycles(G: nx.DiGraph, comps: Iterable[set[str]] | None = None
                ) -> list[tuple[Edge, ...]]:
    """One cycle (as its edges) per strongly connected component that has one, deterministic
    (``comps``: the components, when they are already known)."""
    cycles = []
    for comp in nx.strongly_connected_components(G) if comps is None else comps:
        if len(comp) == 1 and not G.has_edge(*comp, *comp):
            continue
        start = _sorted(comp)[0]
        sub = G.subgraph(comp)
        cyc = nx.find_cycle(sub, source=start)
        cycles.append(tuple((u, v) for u, v, *_ in cyc))
    cycles.sort(key=lambda c: natural_key(c[0][0]))
    return cycles


def name_list(names: list[str], limit: int = 10) -> str:
    """``a, b, c`` (at most ``limit`` names, then ``and N more``)."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


def cycle_text(cycle: Iterable[Edge]) -> str:
    """``a -> b -> a``."""
    cycle = list(cycle)
    if not cycle:
        return ""
    return " -> ".join([u for u, _ in cycle] + [cycle[-1][1]])


# ------------------------------------------------------------------------------ graph report
@dataclass(frozen=True)
class GraphReport:
    """Topology facts of the energy graph (no query involved)."""

    is_dag: bool
    cycles: tuple[tuple[Edge, ...], ...]  # one per strongly connected component with a cycle
    roots: tuple[str, ...]  # nodes without parents
    leaves: tuple[str, ...]  # nodes without children
    isolated: tuple[str, ...]  # nodes without any energy edge
    longest_path: int | None  # L, in edges, for a DAG (SMM_BP = 2L − 1); None for cyclic graphs

    def as_dict(self) -> dict:
        return {
            "is_dag": self.is_dag,
            "cycles": [[list(e) for e in c] for c in self.cycles],
            "roots": list(self.roots),
            "leaves": list(self.leaves),
            "isolated": list(self.isolated),
            "longest_path": self.longest_path,
        }


def is_dag(G: nx.DiGraph) -> bool:
    return nx.is_directed_acyclic_graph(G)


def longest_path(G: nx.DiGraph) -> int | None:
    """L, in edges, of a DAG (SMM_BP = 2L − 1); None for a cyclic graph."""
    return nx.dag_longest_path_length(G) if nx.is_directed_acyclic_graph(G) else None


def graph_report(model: ModelIR) -> GraphReport:
    """Topology facts of the energy graph: DAG or not, cycles, roots, leaves, longest path."""
    G = energy_graph(model)
    L = longest_path(G)
    return GraphReport(
        is_dag=L is not None,
        cycles=tuple(find_cycles(G)),
        roots=tuple(v for v in G if G.in_degree(v) == 0),
        leaves=tuple(v for v in G if G.out_degree(v) == 0),
        isolated=tuple(v for v in G if G.degree(v) == 0),
        longest_path=L,
    )


class QueryGraph:
    """The query graph of one query (the energy graph without the edges into clamped nodes) and
    which free nodes are forward-initialisable (Prop. 3.2 per node, see ``_feasibility``)."""

    def __init__(self, model: ModelIR, query: QueryIR):
        self.G = energy_graph(model)
        self.clamped = {c for c in query.clamp if c in self.G}
        self.R = query_graph(self.G, self.clamped)
        comps = list(nx.strongly_connected_components(self.R))
        self.cycles = find_cycles(self.R, comps)
        self.on_cycle = {u for c in self.cycles for e in c for u in e}
        for comp in comps:  # every node of a cyclic SCC
            if len(comp) > 1 or any(self.R.has_edge(v, v) for v in comp):
                self.on_cycle |= comp
        self.free_roots = [v for v in self.R if self.R.in_degree(v) == 0 and v not in self.clamped]
        self.free = [v for v in self.G if v not in self.clamped]
        # nodes downstream of (or on) a cycle or an unclamped root: one pass, linear time
        self.blocked: set[str] = set()
        stack = [*self.on_cycle, *self.free_roots]
        while stack:
            v = stack.pop()
            if v not in self.blocked:
                self.blocked.add(v)
                stack.extend(self.R.successors(v))

    def blockers(self, v: str) -> tuple[set[str], set[str]]:
        """(nodes on cycles, unclamped roots) among ``v`` and its ancestors in the query graph."""
        up = nx.ancestors(self.R, v) | {v}
        return up & self.on_cycle, {r for r in self.free_roots if r in up}

    def forward_ok(self, v: str) -> bool:
        return v not in self.blocked

    def cycle_through(self, nodes: set[str]) -> tuple[Edge, ...]:
        for c in self.cycles:
            if any(u in nodes for u, _ in c):
                return c
        # a node in a cyclic SCC but not on the one cycle found for it
        v = _sorted(nodes)[0]
        comp = next(c for c in nx.strongly_connected_components(self.R) if v in c)
        return tuple((a, b) for a, b, *_ in nx.find_cycle(self.R.subgraph(comp), source=v))

    def node_reason(self, v: str) -> str:
        """Why ``v`` cannot be forward-initialised (empty when it can)."""
        if v not in self.G or self.forward_ok(v):
            return ""
        cyc, roots = self.blockers(v)
        parts = []
        if v in self.free_roots:
            parts.append(f"{v} has no parents and is not clamped")
        elif roots:
            parts.append(f"{v} depends on unclamped root(s) {', '.join(_sorted(roots))}")
        if cyc:
            where = "is on" if v in self.on_cycle else "is downstream of"
            c = self.cycle_through({v} if v in self.on_cycle else cyc)
            parts.append(f"{v} {where} the cycle {cycle_text(c)}")
        return "; ".join(parts)




# ------------------------------------------------------------------------------ for the engine
def parent_graph(parents: Mapping[str, Sequence[str]]) -> nx.DiGraph:
    """The energy graph of a parent table ``{node: parents}`` (a built network's plan)."""
    G = nx.DiGraph()
    G.add_nodes_from(parents)
    G.add_edges_from((u, v) for v, ps in parents.items() for u in ps)
    return G


def forward_order(G: nx.DiGraph, clamped: Iterable[str]) -> tuple[tuple[str, ...], list[str]]:
    """Prop. 3.2 for a whole query: ``(order, problems)``. ``order`` has the unclamped nodes each
    after its parents (natural tie-break) when ``problems`` is empty; otherwise ``problems`` says
    why no forward pass exists (a cycle of free nodes, unclamped roots)."""
    clamped = set(clamped)
    R = query_graph(G, clamped)
    roots = [v for v in sorted(G, key=natural_key) if G.in_degree(v) == 0 and v not in clamped]
    problems = []
    if not nx.is_directed_acyclic_graph(R):
        cyc = nx.find_cycle(R)
        problems.append("graph has a cycle " + " -> ".join([u for u, *_ in cyc] + [cyc[-1][1]]))
    if roots:
        problems.append("roots not clamped: " + ", ".join(roots))
    if problems:
        return (), problems
    order = nx.lexicographical_topological_sort(R, key=natural_key)
    return tuple(v for v in order if v not in clamped), []


def weight_depth(G: nx.DiGraph, weighted: set[tuple[str, str]]) -> int:
    """The most ``weighted`` edges on a path of the DAG ``G`` (for a cyclic graph: the number of
    nodes with a weighted incoming edge)."""
    if nx.is_directed_acyclic_graph(G):
        best: dict[str, int] = {}
        for v in nx.topological_sort(G):
            best[v] = max((best[u] + ((u, v) in weighted) for u in G.predecessors(v)), default=0)
        return max(best.values(), default=0)
    return len({v for (_, v) in weighted})


def depths(edges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """Edges from the sources: ``{node: longest path to it}`` for the nodes with a parent."""
    A = nx.DiGraph(list(edges))
    out: dict[str, int] = {}
    for v in nx.topological_sort(A):
        ps = list(A.predecessors(v))
        if ps:
            out[v] = 1 + max(out.get(u, 0) for u in ps)
    return out


def ordered(G: nx.DiGraph, nodes: Iterable[str]) -> tuple[str, ...]:
    """``nodes`` each after its parents among them (natural tie-break); they must form a DAG."""
    return tuple(nx.lexicographical_topological_sort(G.subgraph(nodes), key=natural_key))


def ancestors(G: nx.DiGraph, v: str) -> set[str]:
    return nx.ancestors(G, v)


def targets_in_order(edges: Iterable[Edge], what: str = "edges") -> tuple[str, ...]:
    """The nodes with a parent in the graph of ``edges``, each after its parents (natural
    tie-break); ``ValueError`` naming a cycle."""
    A = nx.DiGraph(list(edges))
    if not nx.is_directed_acyclic_graph(A):
        raise ValueError(f"{what} form a cycle: {nx.find_cycle(A)}")
    return tuple(v for v in nx.lexicographical_topological_sort(A, key=natural_key)
                 if A.in_degree(v) > 0)


# ------------------------------------------------------------------------------ init plans
def node_depths(G: nx.DiGraph, clamped: Iterable[str]) -> dict[str, int]:
    """Depth of each node for the hybrid avg rule: the longest path (in edges) from a clamped node in
    the query graph (edges into clamped nodes removed). Clamped nodes have depth 0; nodes that no
    clamped node reaches have depth 0 too. Needs the query graph to be a DAG."""
    clamped = set(clamped)
    R = query_graph(G, clamped)
    if not nx.is_directed_acyclic_graph(R):
        raise ValueError("hybrid avg needs an acyclic query graph (layers are ordered by depth)")
    depth = {v: 0 for v in R}
    reach = set(clamped)
    for v in nx.lexicographical_topological_sort(R, key=natural_key):
        if v in clamped:
            continue
        ps = [u for u in R.predecessors(v) if u in reach]
        if ps:
            reach.add(v)
            depth[v] = 1 + max(depth[u] for u in ps)
    return depth


def feedback_edges(G: nx.DiGraph, clamped: Iterable[str]) -> tuple[tuple[str, str], ...]:
    """The edges a deterministic DFS calls *back edges*: DFS starts from the clamped nodes in
    natural-sort order, then from every node not yet reached (natural order); children are visited in
    natural order; an edge to a node on the current DFS path closes a cycle and is a feedback edge.
    Edges into clamped nodes are ignored (a clamped value never depends on its parents). Removing the
    returned edges leaves a DAG. Sorted naturally."""
    clamped = set(clamped)
    children = {
        u: _sorted(w for w in G.successors(u) if w not in clamped) for u in G.nodes
    }
    state: dict[str, int] = {}  # 1 = on the path, 2 = done
    back: list[tuple[str, str]] = []
    starts = _sorted(c for c in clamped if c in G) + _sorted(v for v in G if v not in clamped)
    for s in starts:
        if s in state:
            continue
        state[s] = 1
        stack = [(s, iter(children[s]))]
        while stack:
            u, it = stack[-1]
            w = next(it, None)
            if w is None:
                state[u] = 2
                stack.pop()
            elif w not in state:
                state[w] = 1
                stack.append((w, iter(children[w])))
            elif state[w] == 1:
                back.append((u, w))
    return tuple(sorted(back, key=lambda e: (natural_key(e[0]), natural_key(e[1]))))
