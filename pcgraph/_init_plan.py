"""The static lowering of activity initialisation (DESIGN §2), once per (network, query,
``Initialisation``): which method each node uses, the observations and the label, the forward /
``mem_forward`` / sweep orders, the reference plan of the memories' first fit, and the SMM cost.

Host-side and cached (``_init.make_initialiser``); graph facts come from ``_graph`` and
``_feasibility`` (Prop. 3.2). The engine's :class:`~pcgraph._init.Initialiser` is an
:class:`InitPlan` that also runs it inside the jitted step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from ._cost import init_smm
from ._errors import Error
from ._feasibility import forward_order
from ._graph import (QueryGraph, ancestors, depths, energy_graph, feedback_edges, natural_key,
                     node_depths, ordered)
from ._registry import INIT_OPTIONS, STATEFUL_INITS as STATEFUL

OPTIONS = INIT_OPTIONS  # name -> default (the registry's)


class InitError(Error, ValueError):
    """An initialisation that cannot be set up (avg without labels, a missing state, ...)."""


def options_with_defaults(options: Mapping[str, Any] | None) -> dict:
    """The registry's defaults completed by ``options`` (an error naming an unknown one)."""
    opts = dict(OPTIONS)
    for k, v in dict(options or {}).items():
        if k not in OPTIONS:
            from ._diagnostics import did_you_mean

            hint = did_you_mean(k, OPTIONS)
            raise InitError(f"unknown init option {k!r}" + (f"; {hint}" if hint else "")
                            + f". Known: {', '.join(OPTIONS)}")
        opts[k] = v
    return opts


def observation_nodes(queries, query) -> tuple[str, ...]:
    """The inputs of a query: its clamped nodes shared with every other query of ``queries`` that
    clamps a non-empty strict subset of them (all its clamped nodes when there is none)."""
    clamp = set(query.clamp)
    subs = [set(o.clamp) for o in queries
            if o.name != query.name and o.clamp and set(o.clamp) < clamp]
    obs = set.intersection(*subs) if subs else clamp
    return tuple(sorted(obs, key=natural_key))


# ------------------------------------------------------------------------------ hybrid avg
def default_hybrid_m(num_layers: int) -> int:
    """m = ⌊L/2⌋ + 1 (seed 004: m ≈ L/2 + 1 worked best); L = longest path (weight layers)."""
    return num_layers // 2 + 1


def hybrid_avg_methods(depths: Mapping[str, int], free: Iterable[str], m: int) -> dict[str, str]:
    """Eq. 10: ``forward`` for free nodes at depth ≤ m (the first m hidden layers), ``avg`` after."""
    return {v: ("forward" if 1 <= depths[v] <= m else "avg") for v in sorted(free, key=natural_key)}


# ------------------------------------------------------------------------------ sweep
@dataclass(frozen=True)
class SweepPlan:
    """A forward sweep through a (possibly cyclic) graph.

    ``order``: the free nodes in the order they are computed (a lexicographic topological order of
    the graph without ``dropped`` and without edges into clamped nodes). ``parents[v]``: the parents
    whose predictions are summed for v (all its parents except those of dropped edges).
    ``dropped``: the feedback edges left out."""

    order: tuple[str, ...]
    parents: Mapping[str, tuple[str, ...]]
    dropped: tuple[tuple[str, str], ...]
    depth: Mapping[str, int]  # sequential matmuls needed to reach each node (for SMM)


def sweep_plan(G, clamped: Iterable[str], nodes: Iterable[str] | None = None) -> SweepPlan:
    """Plan a sweep over ``nodes`` (default: every free node). Nodes outside ``nodes`` that are not
    clamped keep whatever value they already have and count as available sources."""
    clamped = set(clamped)
    dropped = feedback_edges(G, clamped)
    D = G.copy()
    D.remove_edges_from(dropped)
    D.remove_edges_from([(u, v) for u, v in G.edges if v in clamped])
    todo = set(nodes) if nodes is not None else {v for v in G if v not in clamped}
    order = [v for v in ordered(D, D.nodes) if v in todo]
    parents = {v: tuple(sorted(D.predecessors(v), key=natural_key)) for v in order}
    depth: dict[str, int] = {}
    for v in order:
        depth[v] = 1 + max((depth.get(u, 0) for u in parents[v]), default=-1)
    return SweepPlan(tuple(order), parents, dropped, depth)


# ------------------------------------------------------------------------------ the plan
class InitPlan:
    """The static initialisation plan of one (network, query, methods, options).

    ``methods`` is ``{node: method}`` as ``_feasibility.init_plan`` resolves it (``"clamped"`` for
    clamped nodes). ``train``: the plan of a training query (avg reads the clamped labels); for an
    evaluation query (``train=False``) avg nodes are forward-initialised (eq. 7 needs labels)."""

    def __init__(self, netplan, model, query, methods: Mapping[str, str], options=(),
                 train: bool = True):
        if model is None:
            raise InitError("initialisation needs the network's model (build it from a ModelIR)")
        self.netplan, self.query, self.train = netplan, query, train
        self.options = options_with_defaults(dict(options))
        self.G = energy_graph(model)
        a = QueryGraph(model, query.query)
        methods = dict(methods)
        self.label = None
        self._avg(a, methods, observation_nodes(model.queries, query.query))
        if self.options["mem_forward"]:
            _mem_forward(a, methods, set(query.leaf_names))
        for v in query.leaf_names:
            methods[v] = "leaf"
        self.methods = methods
        by: dict[str, list[str]] = {}
        for v in netplan.node_names:
            by.setdefault(methods.get(v, "clamped"), []).append(v)
        self.nodes_by = {k: tuple(v) for k, v in by.items()}
        fw_plan = {v: ("forward" if m == "forward" else m) for v, m in methods.items()}
        self.forward_order = (tuple(forward_order(model, query.query, fw_plan))
                              if self.uses("forward") else ())
        self.mem_forward_order = ordered(a.R, self.nodes_by.get("mem_forward", ()))
        self.sweep_plan = (sweep_plan(self.G, query.clamp, self.nodes_by["sweep"])
                           if self.uses("sweep") else None)
        self.mem_nodes = self.nodes_by.get("mem", ())
        self.ref_forward, self.ref_needs_relax = self._reference_plan(a, model)
        self.amortised_edges = tuple(model.amortised)
        self.smm = self._smm()

    def _avg(self, a: QueryGraph, methods: dict, default_obs: tuple[str, ...]) -> None:
        """The observations, the label and the avg nodes (the test-time rule and the hybrid
        rule, eq. 10, applied to ``methods`` in place)."""
        q, opts = self.query, self.options
        avg_nodes = [v for v, m in methods.items() if m == "avg" and v not in set(q.leaf_names)]
        if avg_nodes and not self.train:
            bad = [v for v in avg_nodes if not a.forward_ok(v)]
            if bad:
                raise InitError(
                    f"init = avg needs the labels of the batch, which query {q.name!r} does "
                    f"not clamp, and forward (its test-time replacement) is impossible for "
                    f"{', '.join(bad)}: {a.node_reason(bad[0])}. Use init = mem for them")
            methods.update({v: "forward" for v in avg_nodes})
            avg_nodes = []
        obs = opts["mem_obs"]
        self.obs = (tuple(obs.split(",")) if isinstance(obs, str) else
                    tuple(obs) if obs else default_obs)
        for o in self.obs:
            if o not in q.clamp:
                raise InitError(f"mem_obs names {o!r}, which query {q.name!r} does not clamp")
        if avg_nodes:
            self.label = self._find_label(opts["avg_label"])
            if opts["avg_m"] is not None or opts["avg_hybrid"]:
                d = node_depths(a.R, q.clamp)
                L = max(d.values(), default=1)
                m = int(opts["avg_m"]) if opts["avg_m"] is not None else default_hybrid_m(L)
                methods.update(hybrid_avg_methods(d, [v for v in avg_nodes if a.forward_ok(v)], m))

    def _reference_plan(self, a: QueryGraph, model) -> tuple[tuple[str, ...], bool]:
        """The memories' first fit: the forward order of the reference initialisation, and
        whether some memorised node needs the equilibrium from zero instead."""
        if not self.mem_nodes:
            return (), False
        clamp = set(self.query.clamp)
        feas = {v for v in self.mem_nodes if a.forward_ok(v)}
        up = set(feas)
        for v in feas:
            up |= {u for u in ancestors(a.R, v) if u not in clamp}
        order = forward_order(model, self.query.query, {
            v: ("forward" if v in up else "clamped" if v in clamp else "other") for v in self.G})
        return tuple(order), any(v not in feas for v in self.mem_nodes)

    # ---- facts
    def uses(self, method: str) -> bool:
        return bool(self.nodes_by.get(method))

    @property
    def stateful(self) -> bool:
        return any(self.uses(m) for m in STATEFUL)

    @property
    def learned(self) -> bool:
        return self.uses("mem") or self.uses("amortised")

    def _find_label(self, given):
        q = self.query
        if given is not None:
            if given not in q.clamp:
                raise InitError(f"avg_label {given!r} is not clamped in query {q.name!r}")
            return given
        cands = [c for c in q.clamp if c not in self.obs]
        if len(cands) == 1:
            return cands[0]
        raise InitError(
            f"init = avg needs class labels: query {q.name!r} clamps "
            + (f"no label node (only its inputs {', '.join(q.clamp) or 'nothing'})" if not cands
               else f"several candidate label nodes ({', '.join(cands)}); set init option "
                    "avg_label = NODE")
            + ". avg is for supervised training with class-balanced batches; use init = mem, "
              "forward or null otherwise")

    def _smm(self) -> int:
        plan = {v: ("clamped" if m == "leaf" else m) for v, m in self.methods.items()}
        depth = None
        if self.uses("amortised"):
            depth = depths((e.src, e.dst) for e in self.amortised_edges)
        return init_smm(plan, self.G, amortised_depth=depth, sweep=self.sweep_plan)


def _mem_forward(a: QueryGraph, methods: dict, leaves: set) -> None:
    """``mem_forward = true``: a mem node whose parents are all clamped, mem or mem_forward,
    outside any cycle, takes the forward prediction from them (``methods`` updated in place)."""
    on_cycle = a.on_cycle
    for v in ordered(a.R, [u for u in a.R if u not in on_cycle]):
        ps = list(a.R.predecessors(v))
        if (methods.get(v) == "mem" and v not in leaves and ps
                and all(methods.get(u) in ("clamped", "mem", "mem_forward") for u in ps)
                and any(methods.get(u) in ("mem", "mem_forward") for u in ps)):
            methods[v] = "mem_forward"
