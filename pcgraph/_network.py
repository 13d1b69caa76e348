"""``ModelIR`` → ``Network``: parameters, node/term grouping into stacked layers, parameterisation.

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
* ``stack`` (build option) tunes this: ``True`` stacks every group; ``False`` puts every node and
  term in its own group (the per-layer structure); an int ``n`` splits groups smaller than ``n``
  into singletons; ``"auto"`` (default) is ``8`` on the CPU (where a batched op over a few
  members measured ~5% slower than separate ops) and ``True`` on accelerators. Parameters never
  depend on it; :meth:`Network.named_params` / :meth:`Network.load_named_params` move them
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

import dataclasses
import functools
import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np

from ._graph import natural_key, to_graph
from ._ir import ModelIR, QueryIR, SettingsIR
from ._shapes import PARAMETRIC, Step, conv_geometry, fan_in, pool_geometry, resolve_chain

Acts = tuple  # tuple[Array[G, B, *shape], ...], one entry per node group


# ------------------------------------------------------------------------------ activations
def _identity(x):
    return x


ACTIVATIONS: dict[str, Callable] = {
    "identity": _identity,
    "linear": _identity,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softplus": jax.nn.softplus,
    "leaky_relu": jax.nn.leaky_relu,
    "elu": jax.nn.elu,
    "selu": jax.nn.selu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "hard_tanh": jax.nn.hard_tanh,
    "softmax": lambda x: jax.nn.softmax(x, axis=-1),
}


def activation(name: str) -> Callable:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; known: {', '.join(sorted(ACTIVATIONS))}"
        ) from None


# ------------------------------------------------------------------------------ weight inits
# Weights are drawn on the host with numpy's PCG64 seeded by the term's JAX key (derived with
# ``jax.random.fold_in`` from the build key and the term name): deterministic on every platform,
# and a build compiles nothing (jax.random on large shapes would compile per shape).
def _orthogonal(rng: np.random.Generator, shape):
    """Orthonormal columns (or rows, whichever is fewer) of W ([in, out]) or of the flattened
    kernel ([O, I·k·k])."""
    m = shape if len(shape) == 2 else (shape[0], math.prod(shape[1:]))
    q, r = np.linalg.qr(rng.standard_normal((max(m), min(m))))
    q = q * np.sign(np.diag(r))
    return (q if m[0] >= m[1] else q.T).reshape(shape)


WEIGHT_INITS: dict[str, Callable] = {
    # name -> f(rng, shape, fan_in, fan_out) -> numpy array (float64)
    "lecun": lambda r, s, fi, fo: r.standard_normal(s) / math.sqrt(fi),
    "normal": lambda r, s, fi, fo: r.standard_normal(s),
    "xavier": lambda r, s, fi, fo: r.standard_normal(s) * math.sqrt(2.0 / (fi + fo)),
    "glorot": lambda r, s, fi, fo: r.standard_normal(s) * math.sqrt(2.0 / (fi + fo)),
    "kaiming": lambda r, s, fi, fo: r.standard_normal(s) * math.sqrt(2.0 / fi),
    "he": lambda r, s, fi, fo: r.standard_normal(s) * math.sqrt(2.0 / fi),
    "zeros": lambda r, s, fi, fo: np.zeros(s),
    "orthogonal": lambda r, s, fi, fo: _orthogonal(r, s),
}
PARAMETERISATIONS = ("standard", "mupc")


def _weight_init_name(init: str, parameterisation: str) -> str:
    if init == "default":
        return "normal" if parameterisation == "mupc" else "lecun"
    if init not in WEIGHT_INITS:
        raise ValueError(f"unknown weight init {init!r}; known: default, {', '.join(WEIGHT_INITS)}")
    return init


def stable_hash(name: str) -> int:
    """A hash of a name that is the same in every process (unlike ``hash``)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


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
    if step.kind == "conv":
        k, s, p = conv_geometry(step.transform, step.in_shape)
        fo = step.out_shape[0] * k * k
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
    energy: str  # gaussian | categorical
    precision: float
    prior: tuple[str, float, float] | None  # (kind, mean, std) on parentless nodes
    has_parents: bool

    @property
    def size(self) -> int:
        return len(self.names)


def _slice_of(idx: tuple[int, ...]) -> tuple[int, int] | None:
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
        return _slice_of(self.src_idx)

    @property
    def tgt_slice(self) -> tuple[int, int] | None:
        return _slice_of(self.tgt_idx)


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
    stack: Any = True
    # the model itself (queries, settings, per-node init) is carried along and compared through
    # its structural hash only: two plans of different models are different static values, so a
    # jitted function never hands back a network whose plan carries another model's queries
    model: ModelIR | None = field(default=None, compare=False, repr=False)
    model_hash: int = 0

    def __hash__(self) -> int:  # cached: equinox hashes static fields on every call
        h = self.__dict__.get("_hash")
        if h is None:
            h = hash((self.name, self.groups, self.terms, self.parents, self.incoming,
                      self.parameterisation, self.depth, self.stack, self.model_hash))
            object.__setattr__(self, "_hash", h)
        return h

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

    @property
    def settings(self) -> SettingsIR:
        return self.model.settings if self.model is not None else SettingsIR()


def term_name(src: str, dst: str, i: int, n_terms: int) -> str:
    return f"{src}->{dst}" if n_terms == 1 else f"{src}->{dst}[{i}]"


# ``stack = "auto"``: the smallest group that is stacked, per backend. On the CPU a batched op over
# a few members is ~5% slower than separate ops (benchmarks/step_speed.py: 3 stacked 512x512
# layers), while deep loops still stack (compile time and, on accelerators, kernel launches).
AUTO_STACK = {"cpu": 8}
AUTO_STACK_DEFAULT = 2  # gpu / tpu: stack every group


def resolve_stack(stack):
    """``True`` / ``False`` / an int minimum group size; ``"auto"`` picks per backend."""
    if stack == "auto":
        return AUTO_STACK.get(jax.default_backend(), AUTO_STACK_DEFAULT)
    if isinstance(stack, bool) or (isinstance(stack, int) and stack >= 1):
        return stack
    raise ValueError(f"stack must be True, False, 'auto' or a positive int, got {stack!r}")


def _split(items: list, stack) -> list[list]:
    """Apply the ``stack`` option to one group of items."""
    if stack is True:
        return [items]
    if stack is False:
        return [[x] for x in items]
    if len(items) < int(stack):
        return [[x] for x in items]
    return [items]


def _weight_depth(G: nx.DiGraph, parametric_edges: set[tuple[str, str]]) -> int:
    if nx.is_directed_acyclic_graph(G):
        best: dict[str, int] = {}
        for v in nx.topological_sort(G):
            best[v] = max(
                (best[u] + ((u, v) in parametric_edges) for u in G.predecessors(v)), default=0
            )
        return max(best.values(), default=0)
    return len({v for (_, v) in parametric_edges})


def plan_network(model: ModelIR, *, parameterisation: str | None = None, stack="auto") -> NetPlan:
    """The static plan of a model (no parameters): grouping, resolved chains, scales."""
    stack = resolve_stack(stack)
    G = to_graph(model)
    param = parameterisation or model.settings.get("parameterisation") or "standard"
    if param not in PARAMETERISATIONS:
        raise ValueError(f"unknown parameterisation {param!r}; known: {', '.join(PARAMETERISATIONS)}")
    nodes = {n.name: n for n in model.nodes}
    parents = {v: tuple(sorted(G.predecessors(v), key=natural_key)) for v in G}
    children = {v: tuple(sorted(G.successors(v), key=natural_key)) for v in G}

    # ---- node groups
    def node_sig(n):
        has_p = bool(parents[n.name])
        prec = float(n.energy.precision) if n.energy.kind == "gaussian" else 1.0
        prior = None
        if n.prior is not None and not has_p:
            prior = (n.prior.kind, float(n.prior.mean), float(n.prior.std))
        return (tuple(n.shape), n.act, n.energy.kind, prec, prior, has_p)

    by_sig: dict[tuple, list[str]] = {}
    for name in sorted(nodes, key=natural_key):
        by_sig.setdefault(node_sig(nodes[name]), []).append(name)
    groups: list[NodeGroup] = []
    for sig, names in by_sig.items():
        for part in _split(names, stack):
            groups.append(NodeGroup(tuple(part), *sig))
    groups.sort(key=lambda g: natural_key(g.names[0]))
    loc = {n: (gi, i) for gi, g in enumerate(groups) for i, n in enumerate(g.names)}

    # ---- terms
    roots = {v for v in G if not parents[v]}
    leaves = {v for v in G if not children[v]}
    has_skips = any(
        all(t.kind == "identity" for t in term.chain) for e in model.edges for term in e.terms
    )
    parametric_edges = set()
    raw_terms = []  # (sig, name, src, dst, term, specs)
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
    L = max(1, _weight_depth(G, parametric_edges))

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

    by_tsig: dict[tuple, list] = {}
    for rt in raw_terms:
        by_tsig.setdefault(rt[0], []).append(rt)
    terms: list[TermGroup] = []
    incoming: dict[str, list[tuple[int, int]]] = {v: [] for v in nodes}
    for sig, members in by_tsig.items():
        members.sort(key=lambda m: (loc[m[3]][1], loc[m[2]][1], natural_key(m[1])))
        for part in _split(members, stack):
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
                    inits=tuple(_weight_init_name(m[4].weight_init, param) for m in part),
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
        is_dag=nx.is_directed_acyclic_graph(G),
        parameterisation=param,
        depth=L,
        stack=stack,
        model=model,
        model_hash=hash(model),
    )


# ------------------------------------------------------------------------------ parameters
def _init_term_group(tg: TermGroup, key, dtype) -> tuple[dict, ...]:
    per_step: list[dict] = []
    for j, st in enumerate(tg.steps):
        if not st.parametric:
            per_step.append({})
            continue
        if st.kind == "dense":
            wshape = (st.in_shape[0], math.prod(st.out_shape))
            bshape = (math.prod(st.out_shape),)
        else:  # conv
            wshape = (st.out_shape[0], st.in_shape[0], st.kernel, st.kernel)
            bshape = (st.out_shape[0],)
        Ws = []
        for name, init in zip(tg.names, tg.inits):
            k = jax.random.fold_in(jax.random.fold_in(key, stable_hash(name)), j)
            rng = np.random.default_rng(np.asarray(jax.random.key_data(k)).astype(np.uint64))
            Ws.append(WEIGHT_INITS[init](rng, wshape, st.fan_in, st.fan_out))
        W = jnp.asarray(np.stack(Ws), dtype)
        p = {"W": W}
        if tg.bias:
            p["b"] = jnp.zeros((tg.size, *bshape), dtype)
        per_step.append(p)
    return tuple(per_step)


def _default_float():
    return jnp.zeros((), dtype=float).dtype


class Network(eqx.Module):
    """A built model: stacked parameters per term group (a pytree of arrays) + a static plan.

    ``params[k][j]`` is the dict (``W``, ``b``) of the j-th transform of term group ``k``, each
    array with a leading stacked axis ``E``. Everything else is in ``plan`` (hashable, static)."""

    params: tuple
    plan: NetPlan = eqx.field(static=True)

    # ---- names and layout
    @property
    def node_names(self) -> tuple[str, ...]:
        """Node names in activity order (group by group, natural order within a group)."""
        return self.plan.node_names

    @property
    def groups(self) -> tuple[NodeGroup, ...]:
        return self.plan.groups

    @property
    def model(self) -> ModelIR | None:
        return self.plan.model

    @property
    def dtype(self):
        leaves = jax.tree_util.tree_leaves(self.params)
        return leaves[0].dtype if leaves else _default_float()

    def term_names(self) -> tuple[str, ...]:
        return tuple(n for tg in self.plan.terms for n in tg.names)

    def node_shape(self, name: str) -> tuple[int, ...]:
        g, _ = self.plan.loc[name]
        return self.plan.groups[g].shape

    # ---- activities
    def zeros(self, batch: int, dtype=None) -> Acts:
        dtype = dtype or self.dtype
        return tuple(jnp.zeros((g.size, batch, *g.shape), dtype) for g in self.plan.groups)

    def pack(self, values: Mapping[str, Any], batch: int | None = None, dtype=None) -> Acts:
        """Dict ``name -> [B, *shape]`` to ``Acts``; nodes not given are zeros."""
        dtype = dtype or self.dtype
        for n in values:
            if n not in self.plan.loc:
                raise KeyError(f"network {self.plan.name!r} has no node {n!r}")
        if batch is None:
            if not values:
                raise ValueError("pack: give at least one value or the batch size")
            batch = next(iter(values.values())).shape[0]
        out = []
        for g in self.plan.groups:
            parts = []
            for n in g.names:
                if n in values:
                    v = jnp.asarray(values[n], dtype)
                    if v.shape != (batch, *g.shape):
                        raise ValueError(
                            f"node {n!r}: expected shape {(batch, *g.shape)}, got {v.shape}"
                        )
                    parts.append(v)
                else:
                    parts.append(jnp.zeros((batch, *g.shape), dtype))
            out.append(jnp.stack(parts))
        return tuple(out)

    def unpack(self, h: Acts) -> dict[str, jax.Array]:
        return {n: h[gi][i] for gi, g in enumerate(self.plan.groups) for i, n in enumerate(g.names)}

    def get(self, h: Acts, name: str) -> jax.Array:
        g, i = self.plan.loc[name]
        return h[g][i]

    # ---- parameters and scales
    def scales(self) -> dict[str, float]:
        """Per-term scale ``s_t`` of the parameterisation."""
        return {n: s for tg in self.plan.terms for n, s in zip(tg.names, tg.scales)}

    def term_params(self, name: str) -> tuple[dict[str, jax.Array], ...]:
        """One term's parameters: a dict per transform of its chain (empty for non-parametric)."""
        try:
            k, e = self.plan.term_loc[name]
        except KeyError:
            raise KeyError(
                f"no term {name!r}; terms: {', '.join(self.term_names())}"
            ) from None
        return tuple({n: a[e] for n, a in p.items()} for p in self.params[k])

    def with_term_params(self, name: str, params: Sequence[Mapping[str, Any]]) -> "Network":
        """A copy with one term's parameters replaced."""
        k, e = self.plan.term_loc[name]
        new = list(self.params)
        new[k] = tuple(
            {n: a.at[e].set(jnp.asarray(q[n], a.dtype)) if n in q else a for n, a in p.items()}
            for p, q in zip(self.params[k], params)
        )
        return eqx.tree_at(lambda net: net.params, self, tuple(new))

    def named_params(self) -> dict[str, tuple[dict[str, jax.Array], ...]]:
        """``{term name: per-transform parameter dicts}``: independent of the stacking layout."""
        return {n: self.term_params(n) for n in self.term_names()}

    def load_named_params(self, named: Mapping[str, Sequence[Mapping[str, Any]]]) -> "Network":
        """A copy with every term's parameters taken from ``named`` (see :meth:`named_params`)."""
        missing = set(self.term_names()) - set(named)
        if missing:
            raise KeyError(f"missing parameters for terms: {', '.join(sorted(missing))}")
        new = []
        for k, tg in enumerate(self.plan.terms):
            steps = []
            for j, p in enumerate(self.params[k]):
                steps.append({key: jnp.stack([jnp.asarray(named[n][j][key], a.dtype)
                                              for n in tg.names]).reshape(a.shape)
                              for key, a in p.items()})
            new.append(tuple(steps))
        return eqx.tree_at(lambda net: net.params, self, tuple(new))

    def n_params(self) -> int:
        return sum(a.size for a in jax.tree_util.tree_leaves(self.params))


def build(
    model: ModelIR,
    *,
    key=None,
    seed: int | None = None,
    parameterisation: str | None = None,
    dtype=None,
    stack="auto",
) -> Network:
    """Build a ``Network`` from a (validated) model.

    ``key`` (a PRNG key) or ``seed`` (default: the model setting ``seed``) fixes the parameters.
    ``dtype`` defaults to JAX's default float (float64 under ``jax.enable_x64``). ``stack``: see
    the module docstring."""
    plan = plan_network(model, parameterisation=parameterisation, stack=stack)
    if key is None:
        seed = int(model.settings.get("seed") if seed is None else seed)
        key = jax.random.PRNGKey(seed)
    dtype = dtype or _default_float()
    params = tuple(_init_term_group(tg, key, dtype) for tg in plan.terms)
    return Network(params=params, plan=plan)


# ------------------------------------------------------------------------------ evaluation
def take(arr, idx: tuple[int, ...]):
    """``arr[idx]`` along axis 0 with a static slice when ``idx`` is contiguous."""
    sl = _slice_of(idx)
    if sl is not None:
        if sl == (0, arr.shape[0]):
            return arr
        return arr[sl[0]:sl[1]]
    return arr[np.asarray(idx)]


def _apply_step(st: StepSpec, p: Mapping[str, jax.Array], x):
    """One transform on stacked inputs ``x: [E, B, *in_shape]``."""
    E, B = x.shape[0], x.shape[1]
    if st.kind == "identity":
        return x
    if st.kind == "flatten":
        return x.reshape(E, B, -1)
    if st.kind == "dense":
        W = p["W"]
        if E == 1:
            y = (x[0] @ W[0])[None]
        else:
            y = jnp.einsum("ebi,eio->ebo", x, W)
        if "b" in p:
            y = y + p["b"][:, None, :]
        if len(st.out_shape) != 1:
            y = y.reshape(E, B, *st.out_shape)
        return y
    if st.kind == "conv":
        W = p["W"]
        pad = [(st.padding, st.padding)] * 2
        dn = ("NCHW", "OIHW", "NCHW")
        if E == 1:
            y = jax.lax.conv_general_dilated(
                x[0], W[0], (st.stride, st.stride), pad, dimension_numbers=dn
            )[None]
        else:  # one grouped convolution over the stacked axis
            C, H, Wd = x.shape[2:]
            xr = jnp.moveaxis(x, 0, 1).reshape(B, E * C, H, Wd)
            Wr = W.reshape(E * W.shape[1], *W.shape[2:])
            y = jax.lax.conv_general_dilated(
                xr, Wr, (st.stride, st.stride), pad, dimension_numbers=dn, feature_group_count=E
            )
            y = jnp.moveaxis(y.reshape(B, E, W.shape[1], *y.shape[2:]), 1, 0)
        if "b" in p:
            y = y + p["b"][:, None, :, None, None]
        return y
    if st.kind in ("maxpool", "avgpool"):
        w, s = st.kernel, st.stride
        dims, strides = (1, 1, 1, w, w), (1, 1, 1, s, s)
        if st.kind == "maxpool":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, "VALID")
        return jax.lax.reduce_window(x, 0.0, jax.lax.add, dims, strides, "VALID") / (w * w)
    raise ValueError(f"unknown transform {st.kind!r}")


def _scale(x, scales: tuple[float, ...]):
    if all(s == 1.0 for s in scales):
        return x
    if all(s == scales[0] for s in scales):
        return x * scales[0]
    s = jnp.asarray(np.asarray(scales), x.dtype).reshape((len(scales),) + (1,) * (x.ndim - 1))
    return x * s


def apply_terms(tg: TermGroup, params: tuple, x, scales: tuple[float, ...] | None = None):
    """A term group's output ``s_t · chain_t(ψ_t(x))`` for stacked sources ``x: [E, B, ...]``."""
    x = activation(tg.pre)(x)
    for st, p in zip(tg.steps, params):
        x = _apply_step(st, p, x)
    return _scale(x, tg.scales if scales is None else scales)


def split_members(params: tuple, size: int) -> tuple[tuple, ...]:
    """A term group's stacked parameters as ``size`` per-member parameter tuples (leading axis
    1). One ``jnp.split`` per array: its gradient is one concatenation, where slicing each member
    out separately would differentiate into ``size`` full-size pads (O(size²) for a deep loop)."""
    if size == 1:
        return (params,)
    parts = tuple({n: jnp.split(a, size, axis=0) for n, a in p.items()} for p in params)
    return tuple(tuple({n: q[n][e] for n in q} for q in parts) for e in range(size))


def apply_member(tg: TermGroup, member_params: tuple, e: int, x):
    """Member ``e`` of a term group, with its own parameters (see :func:`split_members`), on
    ``x: [B, ...]`` (used by the forward pass)."""
    return apply_terms(tg, member_params, x[None], (tg.scales[e],))[0]


def assemble(size: int, contribs: list[tuple[tuple[int, ...], jax.Array]]):
    """Sum contributions ``(target indices, [E, B, ...])`` into ``[size, B, ...]``.

    Disjoint contiguous contributions that tile ``[0, size)`` are concatenated (no zeros, no
    scatter); overlapping ones are added into slices (or scattered when not contiguous)."""
    base: list[tuple[int, int, jax.Array]] = []
    extra = []
    used = set()
    for idx, c in contribs:
        sl = _slice_of(idx)
        if sl is not None and not used.intersection(idx):
            base.append((sl[0], sl[1], c))
            used.update(idx)
        else:
            extra.append((idx, c))
    base.sort(key=lambda t: t[0])
    ref = contribs[0][1]
    tail = ref.shape[1:]
    pieces, pos = [], 0
    for a, b, c in base:
        if a > pos:
            pieces.append(jnp.zeros((a - pos, *tail), ref.dtype))
        pieces.append(c)
        pos = b
    if pos < size:
        pieces.append(jnp.zeros((size - pos, *tail), ref.dtype))
    out = pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=0)
    for idx, c in extra:
        sl = _slice_of(idx)
        if sl is not None:
            out = out.at[sl[0]:sl[1]].add(c)
        else:
            out = out.at[np.asarray(idx)].add(c)
    return out


def preactivations(net: Network, h: Acts, need: Sequence[bool] | None = None) -> list:
    """Summed input ``Σ_t s_t·chain_t(ψ_t(h_src))`` per node group (``None`` for groups without
    parents or not in ``need``): one batched op per term group."""
    plan = net.plan
    contribs: list[list] = [[] for _ in plan.groups]
    for k, tg in enumerate(plan.terms):
        if need is not None and not need[tg.tgt]:
            continue
        out = apply_terms(tg, net.params[k], take(h[tg.src], tg.src_idx))
        contribs[tg.tgt].append((tg.tgt_idx, out))
    return [
        assemble(g.size, contribs[gi]) if contribs[gi] else None
        for gi, g in enumerate(plan.groups)
    ]


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

    def check(self, net: Network) -> None:
        if self.layout != net.plan.layout:
            raise ValueError(
                f"query {self.name!r} was compiled for a different node layout than network "
                f"{net.plan.name!r}; compile it with compile_query(net, ...)"
            )


def _as_query(model: ModelIR | None, query) -> QueryIR:
    if isinstance(query, QueryIR):
        return query
    if isinstance(query, str):
        if model is None:
            raise ValueError("a query name needs the model; pass a QueryIR")
        return model.query(query)
    if isinstance(query, Mapping):
        return QueryIR(
            name=str(query.get("name", "<api>")),
            clamp=tuple(query.get("clamp", ())),
            read=tuple(query.get("read", ())),
            init=tuple(dict(query.get("init", {})).items()),
        )
    if isinstance(query, (tuple, list)):
        return QueryIR(name="<api>", clamp=tuple(query))
    raise TypeError(f"cannot make a query of {query!r}")


def compile_query(net_or_model, query, *, stack="auto") -> QueryPlan:
    """Compile ``query`` (a name, a ``QueryIR``, a mapping with ``clamp``/``read``/``init``, or a
    tuple of clamped names) against a ``Network`` or a ``ModelIR``."""
    if isinstance(net_or_model, Network):
        plan = net_or_model.plan
    elif isinstance(net_or_model, NetPlan):
        plan = net_or_model
    else:
        plan = plan_network(net_or_model, stack=stack)
    q = _as_query(plan.model, query)
    for n in (*q.clamp, *q.read, *(m for m, _ in q.init)):
        if n not in plan.loc:
            raise KeyError(f"query {q.name!r} names unknown node {n!r}")
    clamp = set(q.clamp)
    children, parents = plan.children_of, plan.parents_of
    clamped, free, leaf, counts = [], [], [], []
    for g in plan.groups:
        c = tuple(n in clamp for n in g.names)
        lf = tuple((n not in clamp) and not children[n] for n in g.names)
        fr = tuple((not ci) and (not li) for ci, li in zip(c, lf))
        has_energy = g.has_parents or g.prior is not None
        ct = tuple(has_energy and not li for li in lf)
        clamped.append(c)
        free.append(fr)
        leaf.append(lf)
        counts.append(ct)
    del parents
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
    )
