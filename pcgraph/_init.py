"""Activity initialisation in the engine (DESIGN §2): per-node methods, the state they carry.

The definitions live in ``_initializers.py`` (pure functions on ``{node: [B, ...]}``) and
``_memory.py`` (the Hopfield memory). This module adapts them to a network and a query:

* :func:`resolve` — ``{node: method}`` for a query (API override > query ``init`` > node ``init`` >
  default; ``auto`` per node by ``_feasibility.init_plan``: forward where Prop. 3.2 allows,
  ``amortised`` for ``~>`` targets, ``mem`` elsewhere). Forward where it cannot exist raises the
  ``pcgraph check`` diagnostic (``PcgError``: names the cycle or the unclamped roots, suggests mem).
* :class:`Initialiser` — the static plan of one (network, query, methods, options), an
  :class:`~pcgraph._init_plan.InitPlan` (which nodes are observations, which the label, the forward
  order, the sweep plan, the SMM cost), that also runs it: it creates the
  :class:`~pcgraph._initializers.InitState` (``init_state``), fits the memories on the first batch
  (``prepare``), computes ``h(0)`` (``__call__``) and learns from the relaxed activities
  (``update``). Everything is traced once inside the jitted step: static shapes, no host syncs.

Methods (a registry: :func:`register` adds one, ``stage`` says what it may read):

==========  =====  ==========================================================================
zero        0      0
random      0      N(random_mean, random_std²)
null        0      the previous batch's relaxed h_v (zero before the first batch)
avg         0      mean of the previous batch's relaxed h_v over the same class (eq. 7; zero for
                   a class the previous batch lacked). Training only: at test (no labels) avg
                   nodes are forward-initialised where Prop. 3.2 allows, else it is an error.
                   ``avg_m`` / ``avg_hybrid``: forward for the free nodes at depth ≤ m (eq. 10)
mem         0      the node's modern-Hopfield memory (eq. 8) of the observations
forward     1      μ_v in topological order from the clamped nodes
amortised   2      the ``~>`` path (hybrid models)
mem_forward 3      (``mem_forward = true``) a mem node whose parents are all clamped, mem or
                   mem_forward, outside any cycle, takes the forward prediction from them
sweep       4      a forward sweep with the DFS feedback edges left out (opt-in, cyclic graphs)
==========  =====  ==========================================================================

Free leaves are never initialised (their value is their prediction, set after inference).

Options (``init_options``): ``random_mean``, ``random_std``; ``avg_m``, ``avg_hybrid``,
``avg_label``; ``mem_patterns`` (256), ``mem_heads`` (1), ``mem_embed`` (128), ``mem_delta`` (200),
``mem_combine`` (mean), ``mem_ridge`` (0), ``mem_ref_steps`` (100), ``mem_logit_std`` (2),
``mem_forward`` (false), ``mem_obs`` (node names, comma separated); ``learned_lr`` (1e-2, Adam, for
the memories and the amortiser). Seed 004 used 24 patterns and 1e-3; on the cyclic digits model
that gives 91.9 % against 95.3 % with these defaults (``pcgraph train models/cyclic_digits.pcg
--data digits``, 10 epochs), so the defaults are the larger memory; the benchmarks pass theirs.

**Observations** ``o`` (eq. 8) are the clamped nodes the query shares with every other query of the
model that clamps a strict subset of them — the *inputs*, never the label, so a memory trained with
``clamp img, label`` is used at test with ``clamp img``. ``mem_obs`` overrides.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from . import _initializers as I
from . import _memory as M
from ._config import Initialisation
from ._energy import node_prediction
from ._feasibility import init_plan
from ._init_plan import InitError as InitError  # re-exported: raised by the methods too
from ._init_plan import InitPlan
from ._network import Network
from ._plan import Acts
from ._query import QueryPlan

Initialiser_fn = Callable[..., dict]
INITIALISERS: dict[str, tuple[int, Initialiser_fn]] = {}  # name -> (stage, fn)


def register(name: str, stage: int = 0):
    """Add a method: ``fn(ctx, nodes) -> {node: [B, *shape]}``. ``stage`` orders the methods
    (a method may read the values of earlier stages from ``ctx.vals``)."""

    def deco(fn: Initialiser_fn) -> Initialiser_fn:
        INITIALISERS[name] = (stage, fn)
        return fn

    return deco


@dataclass
class Ctx:
    """What a method sees: the network, the clamped data ``h`` (``Acts``), the values computed so far
    (``vals``: clamped nodes and earlier stages), the state, a PRNG key, the options and the plan."""

    net: Network
    h: Acts
    vals: dict
    state: Any
    key: Any
    options: Mapping[str, Any]
    spec: "Initialiser"
    batch: int


# ------------------------------------------------------------------------------ the methods
def _zeros(ctx: Ctx, v: str):
    return jnp.zeros((ctx.batch, *ctx.net.node_shape(v)), ctx.net.dtype)


@register("zero")
def _m_zero(ctx: Ctx, nodes):
    return {v: _zeros(ctx, v) for v in nodes}


@register("random")
def _m_random(ctx: Ctx, nodes):
    key = jax.random.PRNGKey(0) if ctx.key is None else ctx.key
    shapes = {v: ctx.net.node_shape(v) for v in nodes}
    return I.random(key, shapes, ctx.batch, float(ctx.options["random_mean"]),
                    float(ctx.options["random_std"]), ctx.net.dtype)


@register("null")
def _m_null(ctx: Ctx, nodes):
    st = ctx.spec._need_state(ctx.state, "null")
    return {v: I.fit_batch(st.prev[v], ctx.batch).astype(ctx.net.dtype) for v in nodes}


@register("avg")
def _m_avg(ctx: Ctx, nodes):
    st = ctx.spec._need_state(ctx.state, "avg")
    labels = ctx.vals[ctx.spec.label]
    out = I.avg({v: st.means[v] for v in nodes}, st.counts, labels)
    return {v: a.astype(ctx.net.dtype) for v, a in out.items()}


@register("mem")
def _m_mem(ctx: Ctx, nodes):
    st = ctx.spec._need_state(ctx.state, "mem")
    missing = [v for v in nodes if v not in st.memories]
    if missing:
        raise InitError(f"node(s) {', '.join(missing)} use init = mem in query "
                        f"{ctx.spec.query.name!r} but the state has no memory for them (the "
                        "training query did not memorise them); train with a query where they "
                        "are free, or choose another init for them")
    o = ctx.spec.observations(ctx.vals)
    return {v: M.retrieve(st.memories[v], o).astype(ctx.net.dtype) for v in nodes}


@register("forward", stage=1)
def _m_forward(ctx: Ctx, nodes):
    return _forward_from(ctx.net, ctx.h, ctx.vals, ctx.spec.forward_order)


@register("amortised", stage=2)
def _m_amortised(ctx: Ctx, nodes):
    st = ctx.spec._need_state(ctx.state, "amortised")
    out = st.amortiser(ctx.vals, only=nodes)
    return {v: out[v].astype(ctx.net.dtype) for v in nodes}


@register("mem_forward", stage=3)
def _m_mem_forward(ctx: Ctx, nodes):
    return _forward_from(ctx.net, ctx.h, ctx.vals, ctx.spec.mem_forward_order)


@register("sweep", stage=4)
def _m_sweep(ctx: Ctx, nodes):
    plan = ctx.spec.sweep_plan
    vals, members = dict(ctx.vals), {}
    for v in plan.order:
        if v not in nodes:
            continue
        vals.setdefault(v, _zeros(ctx, v))
        if plan.parents[v]:
            vals[v] = node_prediction(ctx.net, ctx.h, v, vals, members, plan.parents[v])
    return {v: vals[v] for v in nodes}


def _forward_from(net: Network, h: Acts, vals: Mapping[str, Any], order) -> dict:
    """The nodes of ``order`` set to their predictions in turn, from ``vals`` (then ``h``)."""
    vals, members = dict(vals), {}
    for v in order:
        vals[v] = node_prediction(net, h, v, vals, members)
    return {v: vals[v] for v in order}


# ------------------------------------------------------------------------------ planning
@functools.lru_cache(maxsize=256)
def resolve(model, query: QueryPlan, default: str | None, overrides: tuple = ()) -> dict[str, str]:
    """``{node: method}`` for every node (``"clamped"`` for clamped ones); static, cached. Raises
    ``PcgError`` (the ``pcgraph check`` diagnostic) where forward cannot exist."""
    plan = init_plan(model, query.query, dict(overrides) or None, default)
    unknown = {m for m in plan.values() if m != "clamped" and m not in INITIALISERS}
    if unknown:
        raise InitError(f"unknown initialisation {', '.join(sorted(unknown))}; "
                        f"known: auto, {', '.join(sorted(k for k in INITIALISERS if k != 'mem_forward'))}")
    return plan


class Initialiser(InitPlan):
    """The :class:`~pcgraph._init_plan.InitPlan` of one (network, query, methods, options), run
    inside the jitted step: the state it carries (``init_state``), the memories' first fit
    (``prepare``), ``h(0)`` (``__call__``) and learning from the relaxed activities (``update``)."""

    def __init__(self, netplan, model, query: QueryPlan, default=None, overrides=(), options=(),
                 train: bool = True):
        if model is None:
            raise InitError("initialisation needs the network's model (build it from a ModelIR)")
        super().__init__(netplan, model, query, resolve(model, query, default, tuple(overrides)),
                         options, train)

    def _need_state(self, state, method):
        if state is None:
            raise InitError(f"init = {method} in query {self.query.name!r} starts from the state "
                            "learned in training (memories, amortiser, previous activities): pass "
                            "carry=result.state.carry (result = pcgraph.fit(...)) or carry=run.carry "
                            "(run = pcgraph.load_run(DIR)); a new training step starts one with "
                            "step.init_carry(net, batch_size)")
        return state

    def observations(self, vals: Mapping[str, Any]):
        return I.observations({c: vals[c] for c in self.obs}, self.obs)

    # ---- state
    def init_state(self, net: Network, batch_size: int, key=None) -> I.InitState | None:
        """A fresh state for batches of ``batch_size`` (None when no method needs one). Memory
        and amortiser parameters are drawn from ``key`` (default PRNGKey(0))."""
        if not self.stateful:
            return None
        opts = self.options
        key = jax.random.PRNGKey(0) if key is None else key
        dt = net.dtype
        shape = net.node_shape
        prev = {v: jnp.zeros((batch_size, *shape(v)), dt) for v in self.nodes_by.get("null", ())}
        C = 0
        means = {}
        if self.uses("avg"):
            C = math.prod(shape(self.label))
            means = {v: jnp.zeros((C, *shape(v)), dt) for v in self.nodes_by["avg"]}
        memories = {}
        d = sum(math.prod(shape(c)) for c in self.obs)
        for v in self.mem_nodes:
            memories[v] = M.init_memory(
                I.name_key(key, "mem:" + v), d, shape(v), patterns=int(opts["mem_patterns"]),
                heads=int(opts["mem_heads"]), embed=int(opts["mem_embed"]),
                delta=float(opts["mem_delta"]), combine=str(opts["mem_combine"]), dtype=dt)
        amort = None
        if self.uses("amortised"):
            acts = {n: g.act for g in net.plan.groups for n in g.names}
            shapes = {n: shape(n) for n in net.plan.node_names}
            amort = I.init_amortiser(jax.random.fold_in(key, 7), self.amortised_edges, shapes, acts)
            amort = jax.tree_util.tree_map(lambda x: x.astype(dt), amort)
        st = I.make_init_state(prev=prev, means=means, num_classes=C, memories=memories,
                               amortiser=amort, optimizer=self.optimizer if self.learned else None,
                               obs=self.obs)
        return eqx.tree_at(lambda s: s.counts, st, st.counts.astype(dt))

    @functools.cached_property
    def optimizer(self):
        return optax.adam(float(self.options["learned_lr"]))

    # ---- the three phases of a step
    def prepare(self, net: Network, h: Acts, state, relax: Callable[[Acts], Acts] | None):
        """First batch only (``state.batches == 0``, a ``lax.cond``): calibrate each memory's query
        and set its values by least squares so it reproduces the reference initialisation —
        forward where it exists, else the equilibrium reached from zero (``relax``)."""
        if not self.mem_nodes or state is None:
            return state

        def fit(mems):
            ref = self.reference(net, h, relax)
            o = self.observations(_values(net, h, self.query.clamp))
            out = {}
            for v, mem in mems.items():
                if v not in self.mem_nodes:
                    out[v] = mem
                    continue
                mem = M.calibrate_query(mem, o, float(self.options["mem_logit_std"]))
                out[v] = M.fit_values_lstsq(mem, o, ref[v], ridge=float(self.options["mem_ridge"]))
            return out

        mems = jax.lax.cond(state.batches == 0, fit, lambda m: m, state.memories)
        return eqx.tree_at(lambda s: s.memories, state, mems)

    def reference(self, net: Network, h: Acts, relax) -> dict:
        """The reference initialisation of the memorised nodes for clamped data ``h``."""
        vals = _values(net, h, self.query.clamp)
        out = {}
        if self.ref_needs_relax:
            if relax is None:
                raise InitError("the memories' first fit needs the equilibrium from zero")
            hz = relax(h)
            out = {v: net.get(hz, v) for v in self.mem_nodes}
        fw = _forward_from(net, h, vals, self.ref_forward)
        out.update({v: fw[v] for v in self.mem_nodes if v in fw})
        return out

    def __call__(self, net: Network, h: Acts, state=None, key=None) -> Acts:
        """h(0): clamped entries from ``h``, every free node by its method (leaves: zero)."""
        self.query.check(net)
        self._check_state(state)
        B = h[0].shape[1]
        vals = _values(net, h, self.query.clamp)
        ctx = Ctx(net, h, vals, state, key, self.options, self, B)
        methods = [m for m in self.nodes_by if m not in ("clamped", "leaf")]
        for i, m in enumerate(sorted(methods, key=lambda m: (INITIALISERS[m][0], m))):
            ctx.key = None if key is None else jax.random.fold_in(key, i)
            vals.update(INITIALISERS[m][1](ctx, self.nodes_by[m]))
        out = []
        for gi, grp in enumerate(net.plan.groups):
            if all(self.methods.get(n, "clamped") in ("clamped", "leaf") for n in grp.names):
                out.append(h[gi])
            else:
                out.append(jnp.stack([vals[n] if n in vals else h[gi][i]
                                      for i, n in enumerate(grp.names)]).astype(h[gi].dtype))
        return tuple(out)

    def _check_state(self, state) -> None:
        """Memories read the observations they were trained on: a query that does not clamp
        them cannot use them (e.g. a decoder's ``generate`` query clamps z, not the image)."""
        mem = self.nodes_by.get("mem", ()) + self.nodes_by.get("mem_forward", ())
        trained = tuple(getattr(state, "obs", ()) or ())
        if mem and trained and trained != self.obs:
            raise InitError(
                f"query {self.query.name!r}: the memories of {', '.join(mem)} were trained on "
                f"observations {', '.join(trained)}, but this query's observations are "
                f"{', '.join(self.obs) or 'none'}; initialise these nodes another way here, e.g. "
                f"`init {mem[0]} = forward` in the query (or init = forward / zero from the API "
                f"or --init)")

    def update(self, net: Network, state, h: Acts, hs: Acts):
        """After inference: one optimiser step of the memories/amortiser toward the relaxed
        activities ``hs`` (eq. 9), then remember ``hs`` (null) and its class means (avg).
        Returns ``(state, learned loss)``."""
        if state is None:
            return None, jnp.zeros((), net.dtype)
        relaxed = net.unpack(hs)
        loss = jnp.zeros((), net.dtype)
        new = state
        if self.learned:
            o = self.observations(relaxed)
            new, loss = I.train_learned(new, self.optimizer, o, relaxed, relaxed)
        labels = relaxed[self.label] if self.label is not None else None
        new = I.record(new, relaxed, labels)
        new = jax.tree_util.tree_map(
            lambda a, b: a.astype(b.dtype) if hasattr(a, "astype") else a, new, state)
        return new, loss.astype(net.dtype)


def _values(net: Network, h: Acts, names) -> dict:
    return {n: net.get(h, n) for n in names}


@functools.lru_cache(maxsize=256)
def _cached(netplan, source, query: QueryPlan, init: Initialisation, train: bool) -> Initialiser:
    return Initialiser(netplan, source.model if source is not None else None, query, init.method,
                       init.nodes, init.options, train)


def make_initialiser(net: Network, query: QueryPlan, init: Initialisation | None = None, *,
                     train: bool = True) -> Initialiser:
    """The (cached) :class:`Initialiser` of ``query`` for ``init`` (default: the model's)."""
    return _cached(net.plan, net.source, query, Initialisation() if init is None else init, train)


def initialise(
    net: Network,
    query: QueryPlan,
    h: Acts,
    init: Initialisation | None = None,
    *,
    key=None,
    state: Any = None,
    train: bool = True,
) -> Acts:
    """Initial activities: clamped entries from ``h``, every free node by its method. Stateful
    methods (null, avg, mem, amortised) need ``state`` (an ``InitState``)."""
    return make_initialiser(net, query, init, train=train)(net, h, state, key)
