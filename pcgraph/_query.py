"""Queries compiled against a network layout: which node is clamped, free, a free leaf, and
whose energy counts, per node group (static, hashable)."""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._graph import natural_key
from ._ir import QueryIR
from ._plan import NetPlan, plan_network


# ------------------------------------------------------------------------------ queries
@dataclass(frozen=True)
class QueryPlan:
    """A query compiled against a network layout (static, hashable).

    Per node group (tuples of bools, one per node): ``clamped`` (held at data), ``free``
    (inference variables: not clamped, not free leaves), ``leaf`` (free leaves: not clamped and
    no children; their value is their prediction, they are not inference variables and their
    energy is left out because it is minimised exactly), ``counts`` (the node's energy term is
    part of F: a node with parents or a prior, that is not a free leaf)."""

    name: str
    layout: tuple[tuple[str, ...], ...]
    clamp: tuple[str, ...]
    read: tuple[str, ...]
    clamped: tuple[tuple[bool, ...], ...]
    free: tuple[tuple[bool, ...], ...]
    leaf: tuple[tuple[bool, ...], ...]
    counts: tuple[tuple[bool, ...], ...]
    init: tuple[tuple[str, str], ...] = ()
    query: QueryIR | None = field(default=None, compare=False, repr=False)
    # partial observations: (node, mask name) pairs, and per group which members are partly
    # clamped leaves (not inference variables: observed elements are data, missing ones take their
    # prediction, and only observed elements count in F) and partly clamped inner nodes (inference
    # variables whose observed elements are re-imposed every step)
    partial: tuple[tuple[str, str], ...] = ()
    partial_leaf: tuple[tuple[bool, ...], ...] = ()
    partial_inner: tuple[tuple[bool, ...], ...] = ()

    @functools.cached_property
    def free_groups(self) -> tuple[int, ...]:
        return tuple(g for g, f in enumerate(self.free) if any(f))

    @functools.cached_property
    def need(self) -> tuple[bool, ...]:
        """Groups whose pre-activation the energy needs."""
        return tuple(any(c) for c in self.counts)

    @property
    def free_names(self) -> tuple[str, ...]:
        return tuple(n for names, f in zip(self.layout, self.free) for n, x in zip(names, f) if x)

    @property
    def leaf_names(self) -> tuple[str, ...]:
        return tuple(n for names, f in zip(self.layout, self.leaf) for n, x in zip(names, f) if x)

    @property
    def clamped_targets(self) -> tuple[tuple[bool, ...], ...]:
        """``counts`` restricted to clamped nodes (the output loss of a discriminative query)."""
        return tuple(tuple(c and k for c, k in zip(cs, ks)) for cs, ks in zip(self.counts, self.clamped))

    def with_counts(self, counts) -> "QueryPlan":
        return dataclasses.replace(self, counts=tuple(tuple(map(bool, c)) for c in counts))

    def check(self, net: Any) -> None:
        if self.layout != net.plan.layout:
            raise ValueError(
                f"query {self.name!r} was compiled for a different node layout than network "
                f"{net.plan.name!r}; compile it with compile_query(net, ...)"
            )


def _as_query(plan: NetPlan, query) -> QueryIR:
    if isinstance(query, QueryIR):
        return query
    if isinstance(query, str):
        return plan.query(query)
    if isinstance(query, Mapping):
        return QueryIR(
            name=str(query.get("name", "<api>")),
            clamp=tuple(query.get("clamp", ())),
            read=tuple(query.get("read", ())),
            init=tuple(dict(query.get("init", {})).items()),
            partial=tuple(dict(query.get("partial", {})).items()),
        )
    if isinstance(query, (tuple, list)):
        return QueryIR(name="<api>", clamp=tuple(query))
    raise TypeError(f"cannot make a query of {query!r}")


def compile_query(net_or_model, query, *, stack="auto") -> QueryPlan:
    """Compile ``query`` (a name, a ``QueryIR``, a mapping with ``clamp``/``read``/``init``, or a
    tuple of clamped names) against a ``Network`` or a ``ModelIR``."""
    if isinstance(getattr(net_or_model, "plan", None), NetPlan):  # a Network
        plan = net_or_model.plan
    elif isinstance(net_or_model, NetPlan):
        plan = net_or_model
    else:
        plan = plan_network(net_or_model, stack=stack)
    return _compile(plan, _as_query(plan, query))


@functools.lru_cache(maxsize=512)
def _compile(plan: NetPlan, q: QueryIR) -> QueryPlan:
    """One query lowered against one plan (once: cached)."""
    for n in (*q.clamp, *q.read, *(m for m, _ in q.init), *(m for m, _ in q.partial)):
        if n not in plan.loc:
            raise KeyError(f"query {q.name!r} names unknown node {n!r}")
    clamp = set(q.clamp)
    part = {n for n, _ in q.partial}
    if part & clamp:
        raise ValueError(f"query {q.name!r} clamps {', '.join(sorted(part & clamp))} both whole "
                         "and by a mask")
    children = plan.children_of
    clamped, free, leaf, counts, p_leaf, p_inner = [], [], [], [], [], []
    for g in plan.groups:
        c = tuple(n in clamp for n in g.names)
        pl = tuple(n in part and not children[n] for n in g.names)
        pi = tuple(n in part and bool(children[n]) for n in g.names)
        lf = tuple((n not in clamp) and (n not in part) and not children[n] for n in g.names)
        fr = tuple((not ci) and (not li) and (not pli) for ci, li, pli in zip(c, lf, pl))
        has_energy = g.has_parents or g.prior is not None
        ct = tuple(has_energy and not li for li in lf)
        clamped.append(c)
        free.append(fr)
        leaf.append(lf)
        counts.append(ct)
        p_leaf.append(pl)
        p_inner.append(pi)
    return QueryPlan(
        name=q.name,
        layout=plan.layout,
        clamp=tuple(sorted(q.clamp, key=natural_key)),
        read=tuple(q.read),
        clamped=tuple(clamped),
        free=tuple(free),
        leaf=tuple(leaf),
        counts=tuple(counts),
        init=tuple(q.init),
        query=q,
        partial=tuple(q.partial),
        partial_leaf=tuple(p_leaf) if part else (),
        partial_inner=tuple(p_inner) if part else (),
    )
