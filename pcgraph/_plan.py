"""The static plan of a network: node groups, term groups (stacked layers), μPC scales.

Everything here is static and hashable (tuples and frozen dataclasses): the plan is a static field
of :class:`~pcgraph.Network`, so jitted functions specialise on it.
Representation (docs/internals.md, "Network representation"):

* **Node groups.** Nodes are grouped by signature ``(shape, act, energy, precision, prior,
  has_parents)``. Activities are a tuple ``Acts`` with one array ``[G, B, *shape]`` per group. Node
  order within a group is the natural sort of names (``h2`` before ``h10``); groups are ordered by
  their first name. ``has_parents`` is part of the signature so that a group is either entirely
  predicted (has an energy) or entirely made of roots (prior or nothing): no masks in the hot path.
* **Term groups.** Every summand (*term*) of an energy edge is grouped by signature ``(source group,
  target group, pre-activation, resolved chain, bias)``. A term group holds stacked parameters
  ``[E, ...]`` per parametric transform of its chain and static index tuples into the source and
  target node groups, and is evaluated by ONE batched op per transform (an ``einsum`` over the
  stacked axis; a grouped convolution for ``conv``). Contiguous index ranges use static slices.
  A 128-layer residual loop becomes ~4 term groups, not 128 kernels.
* ``stack`` (build option, a :class:`Stacking`) tunes this: ``True`` stacks every group; ``False``
  puts every node and term in its own group (the per-layer structure); an int ``n`` splits groups
  smaller than ``n`` into singletons; ``"auto"`` (default) is ``8`` on the CPU (where a batched
  op over a few members measured ~5% slower than separate ops) and ``True`` on accelerators.
  Parameters never depend on it; :meth:`Network.named_params` / :meth:`Network.load_named_params` move them
  between layouts.

Term names: ``"src->dst"`` for an edge with one term, ``"src->dst[i]"`` for the i-th term of an
edge with several (``dense + identity``). Every term's PRNG key is
``fold_in(key, crc32(term name))`` and every parametric transform ``j`` of its chain uses
``fold_in(term key, j)``, so parameters never depend on declaration order.

Parameterisations (per-term scale ``s_t``, multiplying the whole term output, bias included, as JPC
does):

* ``standard``: ``s_t = 1``; ``weight_init = default`` is LeCun normal ``N(0, 1/fan_in)``.
* ``mupc`` (μPC, seed 000 / JPC ``_get_param_scalings``): ``default`` weights are ``N(0, 1)``;
  a parametric term whose *source is a root* (no parents) is an input layer, ``s = 1/√D`` with
  ``D`` its fan-in; a term whose *target is a leaf* (no children) is an output layer, ``s = 1/N``
  with ``N`` its fan-in (input wins when both hold: a one-layer net); every other parametric term
  is hidden, ``s = 1/√(N·L)`` when the model has identity skips (any energy-edge term whose chain
  is only ``identity``; JPC's global ``skip_model`` flag) and ``1/√N`` otherwise, ``N`` its fan-in.
  ``L`` is JPC's ``len(model)``: the number of **weight layers** (edges with a parametric term) on
  the longest path of the energy graph; e.g. ``x -> h1 -> … -> h_H -> y`` has ``L = H + 1``. For a
  cyclic graph (no longest path) ``L`` is the number of nodes with a parametric incoming edge.
  Identity / pooling / flatten-only terms have ``s = 1``. Chains with several parametric transforms
  use the fan-in of the first one.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import jax
from ._feasibility import query_feasibility
from ._graph import is_dag, longest_path, natural_key, to_graph, weight_depth
from ._ir import ModelIR, QueryIR, SettingsIR
from ._registry import PARAMETERISATIONS, WEIGHT_INITS
from ._shapes import (
    PARAMETRIC,
    Step,
    conv_geometry,
    fan_in,
    pool_geometry,
    resolve_chain,
    upsample_factor,
)

from ._custom_types import Acts as Acts  # noqa: E402 - one array [G, B, *shape] a node group


def weight_init_name(init: str, parameterisation: str) -> str:
    if init == "default":
        return "normal" if parameterisation == "mupc" else "lecun"
    if init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight init {init!r}; known: {', '.join(sorted(WEIGHT_INITS))}")
    return init


# ------------------------------------------------------------------------------ static plan
@dataclass(frozen=True)
class StepSpec:
    """One resolved transform of a term chain (shapes per sample)."""

    kind: str
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    fan_in: int = 1
    fan_out: int = 1

    @property
    def parametric(self) -> bool:
        return self.kind in PARAMETRIC


def _step_spec(step: Step) -> StepSpec:
    k = s = p = 0
    fo = 1
    if step.kind in ("conv", "conv_transpose"):
        k, s, p = conv_geometry(step.transform, step.in_shape)
        fo = step.out_shape[0] * k * k
    elif step.kind == "upsample":
        s = upsample_factor(step.transform)
    elif step.kind in ("maxpool", "avgpool"):
        k, s = pool_geometry(step.transform)
    elif step.kind == "dense":
        fo = math.prod(step.out_shape)
    return StepSpec(step.kind, tuple(step.in_shape), tuple(step.out_shape), k, s, p,
                    fan_in(step), fo)


@dataclass(frozen=True)
class NodeGroup:
    names: tuple[str, ...]
    shape: tuple[int, ...]
    act: str
    energy: str  # gaussian | categorical | bernoulli | laplace
    precision: float | str  # a number, or learned / learned_diagonal (see Network.precisions)
    prior: tuple[str, float, float] | None  # (kind, mean, std) on parentless nodes
    has_parents: bool
    scale: float = 1.0  # laplace

    @property
    def learned_precision(self) -> bool:
        return isinstance(self.precision, str) and self.has_parents

    @property
    def size(self) -> int:
        return len(self.names)


def slice_of(idx: tuple[int, ...]) -> tuple[int, int] | None:
    """(start, stop) when ``idx`` is a contiguous increasing range, else None."""
    if idx and all(b == a + 1 for a, b in zip(idx, idx[1:])):
        return (idx[0], idx[-1] + 1)
    return None


@dataclass(frozen=True)
class TermGroup:
    names: tuple[str, ...]  # term names, one per stacked member
    src: int
    src_idx: tuple[int, ...]
    tgt: int
    tgt_idx: tuple[int, ...]
    pre: str
    steps: tuple[StepSpec, ...]
    bias: bool
    scales: tuple[float, ...]
    inits: tuple[str, ...]  # resolved weight init per member

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def src_slice(self) -> tuple[int, int] | None:
        return slice_of(self.src_idx)

    @property
    def tgt_slice(self) -> tuple[int, int] | None:
        return slice_of(self.tgt_idx)


# ``stack = "auto"``: the smallest group that is stacked, per backend. On the CPU a batched op over
# a few members is ~5% slower than separate ops (benchmarks/step_speed.py: 3 stacked 512x512
# layers), while deep loops still stack (compile time and, on accelerators, kernel launches).
AUTO_STACK = {"cpu": 8}
AUTO_STACK_DEFAULT = 2  # gpu / tpu: stack every group


@dataclass(frozen=True)
class Stacking:
    """How the nodes and edge terms of one signature share a batched op: a group of at least
    ``min_size`` members is stacked into one, a smaller one split into singletons; ``None``
    never stacks (the per-layer structure). Parameters never depend on it.

    ``build(stack=...)`` also takes the short spellings, resolved by :meth:`of` (the one place):
    ``True`` (stack every group), ``False`` (never), an int ``n`` (``Stacking(n)``) and
    ``"auto"`` (``8`` on the CPU, every group on accelerators)."""

    min_size: int | None = 1

    def __post_init__(self):
        n = self.min_size
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"Stacking.min_size must be a positive int or None, got {n!r}")

    @classmethod
    def of(cls, stack: "Stacking | str | bool | int") -> "Stacking":
        if isinstance(stack, Stacking):
            return stack
        if isinstance(stack, str) and stack == "auto":
            return cls(AUTO_STACK.get(jax.default_backend(), AUTO_STACK_DEFAULT))
        if stack is True or stack is False:
            return cls(1 if stack else None)
        if isinstance(stack, int) and stack >= 1:
            return cls(stack)
        raise ValueError(f"stack must be True, False, 'auto', a positive int or a Stacking, got "
                         f"{stack!r}")

    def split(self, items: list) -> list[list]:
        """One group of items as it is stacked: whole, or as singletons."""
        if self.min_size is None or len(items) < self.min_size:
            return [[x] for x in items]
        return [items]


@dataclass(frozen=True)
class NetPlan:
    """Everything static about a network: hashable (tuples and frozen dataclasses only), with a
    cached hash because equinox hashes static fields on every jitted call."""

    name: str
    groups: tuple[NodeGroup, ...]
    terms: tuple[TermGroup, ...]
    parents: tuple[tuple[str, tuple[str, ...]], ...]
    children: tuple[tuple[str, tuple[str, ...]], ...]
    incoming: tuple[tuple[str, tuple[tuple[int, int], ...]], ...]  # node -> ((term group, member))
    is_dag: bool
    parameterisation: str
    depth: int  # L of the mupc scalings (weight layers on the longest path)
    stack: Stacking = Stacking()
    settings: SettingsIR = SettingsIR()  # the model's settings: the defaults of every run
    queries: tuple[QueryIR, ...] = ()  # the model's queries (clamp, read, init, partial)
    longest_path: int | None = None  # of the energy graph, None when cyclic (SMM of BP)
    forward_queries: tuple[str, ...] = ()  # queries with a forward pass (Prop. 3.2)

    def __hash__(self) -> int:  # cached: equinox hashes static fields on every call
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.name, self.groups, self.terms, self.parents, self.incoming,
                      self.parameterisation, self.depth, self.stack, self.settings, self.queries,
                      self.forward_queries))
            object.__setattr__(self, "_hash", h)
        return h

    def query(self, name: str) -> QueryIR:
        for q in self.queries:
            if q.name == name:
                return q
        raise KeyError(f"model {self.name!r} has no query {name!r}; it has: "
                       + ", ".join(q.name for q in self.queries))

    @functools.cached_property
    def loc(self) -> dict[str, tuple[int, int]]:
        return {n: (g, i) for g, grp in enumerate(self.groups) for i, n in enumerate(grp.names)}

    @functools.cached_property
    def parents_of(self) -> dict[str, tuple[str, ...]]:
        return dict(self.parents)

    @functools.cached_property
    def children_of(self) -> dict[str, tuple[str, ...]]:
        return dict(self.children)

    @functools.cached_property
    def incoming_of(self) -> dict[str, tuple[tuple[int, int], ...]]:
        return dict(self.incoming)

    @functools.cached_property
    def term_loc(self) -> dict[str, tuple[int, int]]:
        return {n: (k, e) for k, tg in enumerate(self.terms) for e, n in enumerate(tg.names)}

    @property
    def node_names(self) -> tuple[str, ...]:
        return tuple(n for g in self.groups for n in g.names)

    @property
    def layout(self) -> tuple[tuple[str, ...], ...]:
        return tuple(g.names for g in self.groups)


def term_name(src: str, dst: str, i: int, n_terms: int) -> str:
    return f"{src}->{dst}" if n_terms == 1 else f"{src}->{dst}[{i}]"


def _node_groups(model: ModelIR, parents: dict, stack: Stacking) -> list[NodeGroup]:
    """Nodes grouped by signature (shape, act, energy, precision, prior, has parents)."""
    def node_sig(n):
        has_p = bool(parents[n.name])
        e = n.energy
        prec = (e.precision if e.learned else float(e.precision)) if e.kind == "gaussian" else 1.0
        scale = float(e.scale) if e.kind == "laplace" else 1.0
        prior = None
        if n.prior is not None and not has_p:
            prior = (n.prior.kind, float(n.prior.mean), float(n.prior.std))
        return (tuple(n.shape), n.act, e.kind, prec, prior, has_p, scale)

    nodes = {n.name: n for n in model.nodes}
    by_sig: dict[tuple, list[str]] = {}
    for name in sorted(nodes, key=natural_key):
        by_sig.setdefault(node_sig(nodes[name]), []).append(name)
    groups: list[NodeGroup] = []
    for sig, names in by_sig.items():
        for part in stack.split(names):
            groups.append(NodeGroup(tuple(part), *sig))
    groups.sort(key=lambda g: natural_key(g.names[0]))
    return groups


def _raw_terms(model: ModelIR, loc: dict) -> tuple[list, set]:
    """Every term ``(sig, name, src, dst, term, specs)`` and the edges with parametric terms."""
    nodes = {n.name: n for n in model.nodes}
    parametric_edges = set()
    raw_terms = []
    for e in model.edges:
        src, dst = nodes[e.src], nodes[e.dst]
        for i, term in enumerate(e.terms):
            steps = resolve_chain(term.chain, tuple(src.shape), tuple(dst.shape))
            specs = tuple(_step_spec(s) for s in steps)
            if any(s.parametric for s in specs):
                parametric_edges.add((e.src, e.dst))
            name = term_name(e.src, e.dst, i, len(e.terms))
            sig = (loc[e.src][0], loc[e.dst][0], term.pre, specs, bool(term.bias))
            raw_terms.append((sig, name, e.src, e.dst, term, specs))
    return raw_terms, parametric_edges


def _scaler(param: str, roots: set, leaves: set, L: int, has_skips: bool):
    """``scale(src, dst, specs)``: the per-term scale of the parameterisation (module doc)."""
    def scale(src: str, dst: str, specs: tuple[StepSpec, ...]) -> float:
        if param == "standard":
            return 1.0
        ps = [s for s in specs if s.parametric]
        if not ps:
            return 1.0
        n_in = ps[0].fan_in
        if src in roots:
            return 1.0 / math.sqrt(n_in)
        if dst in leaves:
            return 1.0 / n_in
        return 1.0 / math.sqrt(n_in * L) if has_skips else 1.0 / math.sqrt(n_in)

    return scale


def plan_network(model: ModelIR, *, parameterisation: str | None = None, stack="auto") -> NetPlan:
    """The static plan of a model (no parameters): grouping, resolved chains, scales."""
    stack = Stacking.of(stack)
    G = to_graph(model)
    param = parameterisation or model.settings.get("parameterisation") or "standard"
    if param not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation {param!r}; known: {', '.join(PARAMETERISATIONS)}")
    nodes = {n.name: n for n in model.nodes}
    parents = {v: tuple(sorted(G.predecessors(v), key=natural_key)) for v in G}
    children = {v: tuple(sorted(G.successors(v), key=natural_key)) for v in G}
    groups = _node_groups(model, parents, stack)
    loc = {n: (gi, i) for gi, g in enumerate(groups) for i, n in enumerate(g.names)}
    raw_terms, parametric_edges = _raw_terms(model, loc)
    L = max(1, weight_depth(G, parametric_edges))
    has_skips = any(
        all(t.kind == "identity" for t in term.chain) for e in model.edges for term in e.terms
    )
    scale = _scaler(param, {v for v in G if not parents[v]}, {v for v in G if not children[v]},
                    L, has_skips)

    by_tsig: dict[tuple, list] = {}
    for rt in raw_terms:
        by_tsig.setdefault(rt[0], []).append(rt)
    terms: list[TermGroup] = []
    incoming: dict[str, list[tuple[int, int]]] = {v: [] for v in nodes}
    for sig, members in by_tsig.items():
        members.sort(key=lambda m: (loc[m[3]][1], loc[m[2]][1], natural_key(m[1])))
        for part in stack.split(members):
            sg, tg, pre, specs, bias = sig
            terms.append(
                TermGroup(
                    names=tuple(m[1] for m in part),
                    src=sg,
                    src_idx=tuple(loc[m[2]][1] for m in part),
                    tgt=tg,
                    tgt_idx=tuple(loc[m[3]][1] for m in part),
                    pre=pre,
                    steps=specs,
                    bias=bias,
                    scales=tuple(scale(m[2], m[3], specs) for m in part),
                    inits=tuple(weight_init_name(m[4].weight_init, param) for m in part),
                )
            )
    terms.sort(key=lambda t: (t.tgt, t.src, natural_key(t.names[0])))
    for k, tg in enumerate(terms):
        for e, name in enumerate(tg.names):
            incoming[groups[tg.tgt].names[tg.tgt_idx[e]]].append((k, e))

    names_sorted = sorted(nodes, key=natural_key)
    return NetPlan(
        name=model.name,
        groups=tuple(groups),
        terms=tuple(terms),
        parents=tuple((v, parents[v]) for v in names_sorted),
        children=tuple((v, children[v]) for v in names_sorted),
        incoming=tuple((v, tuple(incoming[v])) for v in names_sorted),
        is_dag=is_dag(G),
        parameterisation=param,
        depth=L,
        stack=stack,
        settings=model.settings,
        queries=tuple(model.queries),
        longest_path=longest_path(G),
        forward_queries=tuple(q.name for q in model.queries
                              if query_feasibility(model, q).feasible),
    )
