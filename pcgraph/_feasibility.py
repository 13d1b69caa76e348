"""Proposition 3.2 (seed 004) and the per-node initialisation plan.

*Forward initialisation exists only if the graph is a DAG and every root (parentless node) is
clamped.* A forward initialisation sets every free node to its prediction, μ_v = h_v, computed in
topological order from the clamped nodes. A clamped node holds data whatever its parents predict, so
it cuts every path through it: the question is asked of the **query graph**, the energy graph with
the edges *into* clamped nodes removed. That graph has exactly the same unclamped roots as the
energy graph, and a cycle of it is a cycle of free nodes (a cycle that passes through a clamped node
never has to close). For a query that clamps no node of a cycle this is Prop. 3.2 word for word.

Per node (the ``auto`` policy): a free node is *forward-initialisable* when, in the query graph,
neither it nor any ancestor lies on a cycle and every root among its ancestors is clamped (so it has
at least one parent). ``auto`` picks ``forward`` there, ``amortised`` for targets of ``~>`` edges
whose sources are available (clamped, or themselves forward/amortised), and ``mem`` elsewhere —
``zero`` when the query clamps no whole node. A node clamped by a mask (``clamp img where mask``)
is free here: its missing elements are unknown, so it neither feeds a forward initialisation nor
is an observation a memory could read (memories are keyed on whole observed nodes, trained on
them); a query whose only data is masked (inpainting with a generative model) therefore starts
its free nodes at zero — the mean of a N(0, ·) prior root — and lets inference do the rest.
``mem`` requested on such a query is an error.

Everything here works on IR with mistakes in it (undeclared names, duplicates): edges naming
undeclared nodes are ignored, so the validator can call it before reporting them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping


from ._diagnostics import Diagnostic, PcgError, option_span
from ._graph import Edge, QueryGraph, cycle_text, is_dag, ordered
from ._graph import graph_report as graph_report  # re-exported: the front end asks this module
from ._graph import energy_graph as energy_graph
from ._graph import name_list as name_list
from ._ir import NO_SPAN, ModelIR, QueryIR, Span

MEM_HINT = (
    "forward initialisation needs a DAG with every root clamped (Prop. 3.2); "
    "use init = mem (a learned memory, works for any graph) or init = auto (forward where possible)"
)

# ---------------------------------------------------------------------------- per query
@dataclass(frozen=True)
class Feasibility:
    """Whether forward initialisation exists for a query (Prop. 3.2) and why not."""

    feasible: bool
    reason: str
    cycle: tuple[Edge, ...] = ()  # the first cycle of free nodes, if any
    unclamped_roots: tuple[str, ...] = ()
    cycles: tuple[tuple[Edge, ...], ...] = field(default=(), repr=False)  # all of them

    def as_dict(self) -> dict:
        return {
            "feasible": self.feasible,
            "reason": self.reason,
            "cycle": [list(e) for e in self.cycle],
            "unclamped_roots": list(self.unclamped_roots),
        }


def _query(model: ModelIR, query: QueryIR | str) -> QueryIR:
    return model.query(query) if isinstance(query, str) else query


def query_feasibility(model: ModelIR, query: QueryIR | str) -> Feasibility:
    """Prop. 3.2 for one query: can every free node be forward-initialised?"""
    a = QueryGraph(model, _query(model, query))
    roots = tuple(a.free_roots)
    parts = []
    if a.cycles:
        parts.append(f"graph has a cycle {cycle_text(a.cycles[0])}")
        if len(a.cycles) > 1:
            parts[-1] += f" (and {len(a.cycles) - 1} more)"
    if roots:
        parts.append(f"roots not clamped: {name_list(list(roots))}")
    if parts:
        return Feasibility(False, "; ".join(parts), a.cycles[0] if a.cycles else (), roots,
                           tuple(a.cycles))
    if is_dag(a.G):
        reason = "DAG with every root clamped"
    else:
        reason = "every root clamped and every cycle passes through a clamped node"
    return Feasibility(True, reason)


# --------------------------------------------------------------------------- init plan
@dataclass(frozen=True)
class PlanProblem:
    """An initialisation request that cannot be honoured (forward where Prop. 3.2 forbids it, or
    amortised on a node without a ``~>`` edge). ``origin`` says where it was requested:
    ``"node"`` (the node's ``init =``), ``"query"`` (the query's ``init n = ...``), ``"override"``
    (the API), ``"default"`` (the model setting ``init`` or the API default)."""

    node: str
    method: str
    origin: str
    reason: str
    span: Span = NO_SPAN


def _requests(model, query, overrides, default):
    """(node -> (method, origin, span)) explicit requests, later sources winning; global default."""
    req: dict[str, tuple[str, str, Span]] = {}
    for n in model.nodes:
        if n.init is not None:
            req[n.name] = (n.init, "node", n.span)
    spans = dict(query.name_spans)
    for name, m in query.init:
        req[name] = (m, "query", spans.get(name, query.span))
    for name, m in (overrides or {}).items():
        req[name] = (m, "override", option_span("init_overrides"))
    glob = default if default is not None else model.settings.get("init")
    return req, glob, (option_span("init") if default is not None else model.settings.span)


def plan_with_problems(
    model: ModelIR,
    query: QueryIR | str,
    overrides: Mapping[str, str] | None = None,
    default: str | None = None,
) -> tuple[dict[str, str], list[PlanProblem]]:
    """The init plan and the requests it could not honour (never raises)."""
    query = _query(model, query)
    a = QueryGraph(model, query)
    req, glob, glob_span = _requests(model, query, overrides, default)
    plan: dict[str, str] = {}
    problems: list[PlanProblem] = []
    # sources of amortised edges into each node
    amort: dict[str, set[str]] = {}
    for e in model.amortised:
        if e.src in a.G and e.dst in a.G:
            amort.setdefault(e.dst, set()).add(e.src)

    auto_nodes = []
    for v in a.G:
        if v in a.clamped:
            plan[v] = "clamped"
            continue
        method, origin, span = req.get(v, (glob, "default", glob_span))
        if method == "auto":
            auto_nodes.append(v)
            continue
        plan[v] = method
        if method == "forward" and not a.forward_ok(v):
            reason = a.node_reason(v) if origin != "default" else ""
            problems.append(PlanProblem(v, method, origin, reason, span))
        elif method == "amortised" and v not in amort:
            problems.append(PlanProblem(v, method, origin, f"{v} is not the target of a ~> edge", span))
        elif method == "mem" and not a.clamped:
            problems.append(PlanProblem(v, method, origin, _NO_OBS, span))
    for v in auto_nodes:
        if a.forward_ok(v):
            plan[v] = "forward"
    # amortised: every ~> source available (clamped, forward or amortised); iterate to a fixpoint
    changed = True
    while changed:
        changed = False
        for v in auto_nodes:
            if v not in plan and v in amort and all(
                plan.get(s) in ("clamped", "forward", "amortised") for s in amort[v]
            ):
                plan[v] = "amortised"
                changed = True
    for v in auto_nodes:  # a memory reads the whole clamped nodes: none, nothing to recall from
        plan.setdefault(v, "mem" if a.clamped else "zero")
    return {v: plan[v] for v in a.G}, problems


def init_plan(
    model: ModelIR,
    query: QueryIR | str,
    overrides: Mapping[str, str] | None = None,
    default: str | None = None,
) -> dict[str, str]:
    """``{node: method}`` for one query, in natural node order.

    Clamped nodes get ``"clamped"``. A free node's method is, by priority: ``overrides[node]`` (the
    API), the query's ``init node = m``, the node's own ``init = m``, then ``default`` (the API) or
    the model setting ``init``. ``auto`` resolves per node (module docstring). Raises ``PcgError``
    when forward is requested where Prop. 3.2 forbids it, or amortised without a ``~>`` edge."""
    from ._validate import override_diagnostics

    bad = override_diagnostics(model, _query(model, query), overrides)
    if bad:
        raise PcgError(bad)
    plan, problems = plan_with_problems(model, query, overrides, default)
    if problems:
        raise PcgError(plan_diagnostics(model, _query(model, query), problems))
    return plan


def plan_diagnostics(model: ModelIR, query: QueryIR, problems: list[PlanProblem]) -> list[Diagnostic]:
    """One diagnostic per problem, except that forward requested by the default policy (model
    setting or API default) gives a single diagnostic for the query, with Prop. 3.2's reason."""
    out = [problem_diagnostic(p, query.name) for p in problems
           if not (p.origin == "default" and p.method == "forward")]
    blocked = [p for p in problems if p.origin == "default" and p.method == "forward"]
    if blocked:
        reason = query_feasibility(model, query).reason
        nodes = name_list([p.node for p in blocked])
        msg = (f"init = forward is impossible in query {query.name!r}: {reason} "
               f"(free nodes that cannot be forward-initialised: {nodes})")
        out.append(Diagnostic("error", msg, blocked[0].span, MEM_HINT, "forward-infeasible"))
    return out


def forward_order(model: ModelIR, query: QueryIR | str, plan: Mapping[str, str]) -> list[str]:
    """The forward-planned nodes of ``plan`` in an order where each comes after its parents."""
    a = QueryGraph(model, _query(model, query))
    keep = [v for v in a.R if plan.get(v) in ("clamped", "forward")]
    order = ordered(a.R, keep)
    return [v for v in order if plan.get(v) == "forward"]


_NO_OBS = ("the query clamps no whole node, so a memory has no observation to recall from (a node "
           "clamped `where` a mask is free)")


def problem_diagnostic(p: PlanProblem, query: str) -> Diagnostic:
    if p.method == "forward":
        msg = f"init = forward is impossible for node {p.node!r} in query {query!r}: {p.reason}"
        return Diagnostic("error", msg, p.span, MEM_HINT, "forward-infeasible")
    if p.method == "mem":
        msg = f"init = mem is impossible for node {p.node!r} in query {query!r}: {p.reason}"
        return Diagnostic("error", msg, p.span, "use init = zero or init = auto, or clamp a whole "
                          "node the memory can read", "mem-without-observation")
    msg = f"init = {p.method} is impossible for node {p.node!r} in query {query!r}: {p.reason}"
    return Diagnostic("error", msg, p.span, f"add an amortised edge `x ~> {p.node}` or use init = mem",
                      "amortised-without-edge")
