"""Activity initialisers as pure functions, and the ``InitState`` they carry between batches.

DESIGN.md §2 / seed 004 §3–4. Activities are passed as ``{node: array [B, *shape]}`` (batch first).
Nothing here knows how the engine groups nodes; ``_init.py`` adapts these definitions to the
network. Every function is pure (a new value out, nothing mutated) and jit-friendly.

============  ================================================================================
method        h_v at t = 0
============  ================================================================================
zero          0                                                            :func:`zero`
random        N(mean, std²) — ``std`` is the standard deviation            :func:`random`
null          the previous batch's converged h_v (carry-over)              :func:`null`
avg           mean of the previous batch's converged h_v over samples of
              the same class (eq. 7); hybrid: forward for the first m
              layers by depth, avg for the rest (eq. 10)                   :func:`avg` (the hybrid rule: ``_init_plan``)
sweep         opt-in for cyclic graphs: a forward pass in topological order
              with a deterministic set of feedback edges left out          :func:`sweep` (its plan: ``_init_plan``)
amortised     the amortised (``~>``) path evaluated on its sources         :class:`Amortiser`
mem           a modern-Hopfield memory per node (``_memory.py``)
============  ================================================================================

``sweep`` is never called ``forward`` (it is not the fixed point Prop. 3.2 talks about: the energy
of the left-out feedback edges is not zero) and ``auto`` never chooses it.

The state these methods need between batches — previous activities (null), class means (avg),
memories (mem), amortiser parameters (amortised) and their optimiser state — is one explicit pytree,
:class:`InitState`, part of the model state, saved and restored with checkpoints.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp

from ._graph import natural_key, targets_in_order
from ._memory import HopfieldMemory, memory_loss, retrieve
from ._kernels import activation
from ._network import name_key

Array = jax.Array
Acts = Mapping[str, Array]


def _nsorted(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


# ------------------------------------------------------------------------------ stateless
def zero(shapes: Mapping[str, tuple[int, ...]], batch: int, dtype=None) -> dict[str, Array]:
    """h_v = 0 for every node in ``shapes`` (``{node: per-sample shape}``)."""
    dtype = dtype or jnp.result_type(float)
    return {v: jnp.zeros((batch, *s), dtype) for v, s in shapes.items()}


def random(
    key: Array,
    shapes: Mapping[str, tuple[int, ...]],
    batch: int,
    mean: float = 0.0,
    std: float = 1.0,
    dtype=None,
) -> dict[str, Array]:
    """h_v ~ N(mean, std²) elementwise, i.i.d. Each node's key is derived from its name."""
    if std < 0:
        raise ValueError(f"random init: std must be non-negative, got {std}")
    dtype = dtype or jnp.result_type(float)
    return {
        v: mean + std * jax.random.normal(name_key(key, v), (batch, *s), dtype)
        for v, s in shapes.items()
    }


def fit_batch(x: Array, batch: int) -> Array:
    """``x`` (``[B', ...]``) resized to ``batch`` rows: truncated, or tiled cyclically (static shapes,
    so a last, smaller or larger batch still gets a carried-over value)."""
    b = x.shape[0]
    if b == batch:
        return x
    if b > batch:
        return x[:batch]
    reps = -(-batch // b)
    return jnp.concatenate([x] * reps, axis=0)[:batch]


def null(prev: Acts, batch: int | None = None) -> dict[str, Array]:
    """Carry-over: h_v(0, b+1) = h_v(T, b). ``batch`` resizes (see :func:`fit_batch`)."""
    if batch is None:
        return dict(prev)
    return {v: fit_batch(h, batch) for v, h in prev.items()}


# ------------------------------------------------------------------------------ avg (eq. 7)
def as_class_ids(labels: Array, num_classes: int | None = None) -> Array:
    """Integer class ids from ``[B]`` integers or ``[B, C]`` one-hot / probabilities (argmax)."""
    labels = jnp.asarray(labels)
    if labels.ndim == 2:
        return jnp.argmax(labels, axis=-1)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [B] class ids or [B, C] one-hot, got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        labels = labels.astype(jnp.int32)
    return labels


def class_means(h: Acts, labels: Array, num_classes: int) -> tuple[dict[str, Array], Array]:
    """Per node, the mean of ``h_v`` over the samples of each class: ``({v: [C, *shape]}, counts [C])``.

    A class with no sample has mean 0 and count 0."""
    ids = as_class_ids(labels, num_classes)
    onehot = jax.nn.one_hot(ids, num_classes)  # [B, C]
    counts = onehot.sum(0)
    inv = 1.0 / jnp.maximum(counts, 1.0)
    means = {}
    for v, x in h.items():
        flat = x.reshape(x.shape[0], -1)
        m = (onehot.T.astype(flat.dtype) @ flat) * inv[:, None].astype(flat.dtype)
        means[v] = m.reshape((num_classes,) + x.shape[1:])
    return means, counts


def avg(
    means: Acts,
    counts: Array,
    labels: Array,
    fallback: Acts | None = None,
) -> dict[str, Array]:
    """Eq. 7: h_{v,i}(0, b+1) = mean of h_{v,j}(T, b) over the previous batch's samples j with
    y_j = y_i. ``means``/``counts`` come from :func:`class_means` of the previous batch. Samples whose
    class the previous batch did not contain take ``fallback[v]`` (``[B, *shape]``; zero if absent)."""
    ids = as_class_ids(labels)
    seen = counts[ids] > 0  # [B]
    out = {}
    for v, m in means.items():
        h = m[ids]
        fb = fallback[v] if fallback is not None and v in fallback else jnp.zeros_like(h)
        mask = seen.reshape((-1,) + (1,) * (h.ndim - 1))
        out[v] = jnp.where(mask, h, fb)
    return out


# ------------------------------------------------------------------------------ sweep
def sweep(
    plan,
    h: Acts,
    predict: Callable[[str, Mapping[str, Array]], Array],
) -> dict[str, Array]:
    """Run a sweep: for v in ``plan.order``, ``h[v] = predict(v, {u: h[u] for u in plan.parents[v]})``
    where ``predict`` sums only the given parents' predictions (the engine's μ restricted to those
    edges). A node without kept parents keeps its value in ``h`` (its fallback, e.g. zero).
    ``h`` holds the clamped values and the fallbacks; a new dict is returned."""
    out = dict(h)
    for v in plan.order:
        ps = plan.parents[v]
        if ps:
            out[v] = predict(v, {u: out[u] for u in ps})
    return out


# ------------------------------------------------------------------------------ amortised
class AmortisedTerm(eqx.Module):
    """One term of an amortised edge: ``pre`` on the source, flatten, then one dense map.

    (Amortised edges are learned initialisers, not part of the energy; any chain of the language is
    accepted and realised as ``flatten |> dense`` to the target size, which is what every ``~>``
    edge in the examples is.)"""

    W: Array  # [in, out]
    b: Array | None  # [out]
    pre: str = eqx.field(static=True)

    def __call__(self, x: Array) -> Array:
        x = activation(self.pre)(x).reshape(x.shape[0], -1)
        y = x @ self.W
        return y if self.b is None else y + self.b


class Amortiser(eqx.Module):
    """The amortised (``~>``) path of a model: for each target v,
    ``h_v = φ_v(Σ_{e = (u ~> v)} Σ_t term_t(h_u))`` — the same form as a prediction μ_v, with its
    own parameters, outside the energy. Targets are evaluated in topological order of the ``~>``
    graph, so chains (``img ~> h ~> z``) use the upstream amortised value."""

    terms: dict[str, tuple[AmortisedTerm, ...]]  # edge key "u~>v" -> terms
    edges: tuple[tuple[str, str], ...] = eqx.field(static=True)  # (src, dst), evaluation order
    targets: tuple[str, ...] = eqx.field(static=True)  # in evaluation order
    acts: tuple[tuple[str, str], ...] = eqx.field(static=True)  # (target, φ_v)
    shapes: tuple[tuple[str, tuple[int, ...]], ...] = eqx.field(static=True)

    def __call__(self, h: Acts, only: Iterable[str] | None = None) -> dict[str, Array]:
        """New values for the targets (``only`` those and the amortised targets they depend on,
        when given), given ``h`` holding the sources (clamped data and any other initial values).
        Returns only the targets."""
        acts, shapes = dict(self.acts), dict(self.shapes)
        cur = dict(h)
        out = {}
        todo = set(self.targets) if only is None else self._upstream(set(only))
        for v in self.targets:
            if v not in todo:
                continue
            total = None
            for u, w in self.edges:
                if w != v:
                    continue
                for t in self.terms[f"{u}~>{v}"]:
                    y = t(cur[u])
                    total = y if total is None else total + y
            val = activation(acts[v])(total).reshape((total.shape[0],) + shapes[v])
            cur[v] = val
            out[v] = val
        return out

    def _upstream(self, wanted: set[str]) -> set[str]:
        need = set(wanted) & set(self.targets)
        for v in reversed(self.targets):
            if v in need:
                need |= {u for u, w in self.edges if w == v and u in self.targets}
        return need

    def depth(self) -> dict[str, int]:
        """Sequential matmuls to each target along the amortised path (sources count 0)."""
        d: dict[str, int] = {}
        for v in self.targets:
            d[v] = 1 + max(d.get(u, 0) for u, w in self.edges if w == v)
        return d


def init_amortiser(
    key: Array,
    edges: Iterable[Any],
    shapes: Mapping[str, tuple[int, ...]],
    acts: Mapping[str, str] | None = None,
) -> Amortiser:
    """Parameters for the amortised edges. ``edges``: ``EdgeIR`` with ``amortised=True`` (or
    ``(src, dst)`` pairs, one dense term without pre-activation). Weights: Kaiming-uniform-like
    U(±1/√fan_in) drawn from a key derived from the edge's name; biases zero."""
    acts = dict(acts or {})
    specs = []
    for e in edges:
        if isinstance(e, tuple):
            specs.append((e[0], e[1], (("identity", True),)))
        else:
            specs.append((e.src, e.dst, tuple((t.pre, t.bias) for t in e.terms)))
    order = list(targets_in_order([(u, v) for u, v, _ in specs], "amortised edges"))
    terms = {}
    for u, v, ts in specs:
        fan_in, fan_out = math.prod(shapes[u]), math.prod(shapes[v])
        bound = 1.0 / math.sqrt(fan_in)
        k = name_key(key, f"{u}~>{v}")
        lst = []
        for i, (pre, bias) in enumerate(ts):
            W = jax.random.uniform(jax.random.fold_in(k, i), (fan_in, fan_out), minval=-bound, maxval=bound)
            lst.append(AmortisedTerm(W, jnp.zeros((fan_out,)) if bias else None, pre))
        terms[f"{u}~>{v}"] = tuple(lst)
    edge_order = tuple(
        sorted(((u, v) for u, v, _ in specs), key=lambda e: (order.index(e[1]), natural_key(e[0])))
    )
    return Amortiser(
        terms=terms,
        edges=edge_order,
        targets=tuple(order),
        acts=tuple((v, acts.get(v, "identity")) for v in order),
        shapes=tuple((v, tuple(shapes[v])) for v in order),
    )


def amortised(amortiser: Amortiser, h: Acts) -> dict[str, Array]:
    """Evaluate the amortised path on its sources (see :class:`Amortiser`)."""
    return amortiser(h)


def amortiser_loss(amortiser: Amortiser, h_source: Acts, h_target: Acts) -> Array:
    """Squared error of the amortised prediction to the relaxed latents (targets treated as
    constants; sources are the clamped data). Sum over nodes and features, mean over the batch."""
    pred = amortiser(h_source)
    total = 0.0
    for v, p in pred.items():
        r = p - jax.lax.stop_gradient(h_target[v])
        total = total + jnp.sum(r.reshape(r.shape[0], -1) ** 2) / r.shape[0]
    return total


# ------------------------------------------------------------------------------ the state
class InitState(eqx.Module):
    """Everything the initialisers carry between batches (part of the model state; checkpointed).

    * ``prev``: ``{node: [B, *shape]}`` the last batch's converged activities (``null``).
    * ``means``: ``{node: [C, *shape]}`` the last batch's class means (``avg``) and ``counts`` [C].
    * ``memories``: ``{node: HopfieldMemory}`` (``mem``).
    * ``amortiser``: :class:`Amortiser` or ``None`` (``amortised``).
    * ``opt_state``: the optax state of (memories, amortiser) — trained every step.
    * ``batches``: number of batches recorded (0 before the first: null/avg then fall back, and the
      memories' values get their least-squares fit).
    * ``obs`` (static): the nodes whose clamped values, flattened and concatenated in natural
      order, are the memories' observations ``o``.
    """

    prev: dict[str, Array]
    means: dict[str, Array]
    counts: Array
    memories: dict[str, HopfieldMemory]
    amortiser: Amortiser | None
    opt_state: Any
    batches: Array
    obs: tuple[str, ...] = eqx.field(static=True, default=())

    @property
    def learned(self) -> tuple[dict[str, HopfieldMemory], Amortiser | None]:
        """The trainable part: (memories, amortiser)."""
        return (self.memories, self.amortiser)


def make_init_state(
    *,
    prev: Mapping[str, Array] | None = None,
    means: Mapping[str, Array] | None = None,
    num_classes: int = 0,
    memories: Mapping[str, HopfieldMemory] | None = None,
    amortiser: Amortiser | None = None,
    optimizer: Any = None,
    obs: Iterable[str] = (),
) -> InitState:
    """A fresh state. ``prev``/``means`` give the arrays' shapes (zeros are fine). With an optax
    ``optimizer`` the optimiser state of (memories, amortiser) is initialised."""
    memories = dict(memories or {})
    learned = (memories, amortiser)
    opt_state = None
    if optimizer is not None:
        opt_state = optimizer.init(eqx.filter(learned, eqx.is_inexact_array))
    return InitState(
        prev=dict(prev or {}),
        means=dict(means or {}),
        counts=jnp.zeros((num_classes,)),
        memories=memories,
        amortiser=amortiser,
        opt_state=opt_state,
        batches=jnp.zeros((), jnp.int32),
        obs=tuple(_nsorted(obs)),
    )


def record(state: InitState, h: Acts, labels: Array | None = None) -> InitState:
    """After a batch: remember its converged activities for ``null`` (the nodes in ``state.prev``)
    and, with labels, its class means for ``avg`` (the nodes in ``state.means``)."""
    prev = {v: h[v] for v in state.prev}
    means, counts = state.means, state.counts
    if state.means:
        if labels is None:
            raise ValueError("avg initialisation needs the labels of each training batch")
        means, counts = class_means({v: h[v] for v in state.means}, labels, state.counts.shape[0])
    return eqx.tree_at(
        lambda s: (s.prev, s.means, s.counts, s.batches),
        state,
        (prev, means, counts, state.batches + 1),
    )


def learned_loss(learned, obs: Array, h_source: Acts, h_target: Acts) -> Array:
    """Eq. 9 summed over the memorised nodes plus the amortiser's squared error."""
    memories, amort = learned
    loss = jnp.zeros(())
    for v, mem in memories.items():
        loss = loss + memory_loss(mem, obs, h_target[v])
    if amort is not None:
        loss = loss + amortiser_loss(amort, h_source, h_target)
    return loss


def train_learned(
    state: InitState,
    optimizer: Any,
    obs: Array,
    h_source: Acts,
    h_target: Acts,
) -> tuple[InitState, Array]:
    """One optax step of the memories and the amortiser toward the relaxed activities ``h_target``.
    ``obs``: the concatenated clamped observations ``[B, d]``; ``h_source``: the clamped values (the
    amortiser's inputs). Returns ``(new_state, loss)``."""
    learned = state.learned
    if not state.memories and state.amortiser is None:
        return state, jnp.zeros(())
    params, static = eqx.partition(learned, eqx.is_inexact_array)

    def f(p):
        return learned_loss(eqx.combine(p, static), obs, h_source, h_target)

    loss, grads = jax.value_and_grad(f)(params)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    params = eqx.apply_updates(params, updates)
    memories, amort = eqx.combine(params, static)
    new = eqx.tree_at(
        lambda s: (s.memories, s.amortiser, s.opt_state),
        state,
        (memories, amort, opt_state),
        is_leaf=lambda x: x is None,
    )
    return new, loss


def memory_init(memories: Mapping[str, HopfieldMemory], obs: Array) -> dict[str, Array]:
    """``mem``: every memorised node's retrieval (eq. 8) for observations ``obs``."""
    return {v: retrieve(m, obs) for v, m in memories.items()}


def observations(h: Acts, clamped: Iterable[str]) -> Array:
    """``o``: the clamped nodes' values, flattened and concatenated in natural-sort order: ``[B, d]``."""
    names = _nsorted(clamped)
    return jnp.concatenate([h[c].reshape(h[c].shape[0], -1) for c in names], axis=-1)


# ------------------------------------------------------------------------------ SMM
