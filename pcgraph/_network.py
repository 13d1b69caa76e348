"""``ModelIR`` → ``Network``: the parameters of a model's static plan (``_plan``).

Term names: ``"src->dst"`` for an edge with one term, ``"src->dst[i]"`` for the i-th term of an
edge with several (``dense + identity``). Every term's PRNG key is
``fold_in(key, crc32(term name))`` and every parametric transform ``j`` of its chain uses
``fold_in(term key, j)``, so parameters never depend on declaration order. Weights are drawn on the
host (numpy PCG64 seeded by the term's key): deterministic everywhere, and a build compiles nothing.
The plan (grouping, stacking, μPC scales) is documented in ``_plan``.
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Callable, Mapping, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._ir import ModelIR
from ._plan import Acts, NetPlan, NodeGroup, TermGroup, plan_network


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


def stable_hash(name: str) -> int:
    """A hash of a name that is the same in every process (unlike ``hash``)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def name_key(key, name: str):
    """A PRNG key for ``name`` derived from ``key``: independent of declaration/iteration order."""
    return jax.random.fold_in(key, stable_hash(name))


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
            k = jax.random.fold_in(name_key(key, name), j)
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


class Source:
    """The model a network was built from, for the host-side lowering that needs the whole model
    (initialisation plans, the limits of a training run, ``pcgraph analyse``); never read inside
    a jitted function. A static field compared by a structural hash computed once."""

    __slots__ = ("model", "digest")

    def __init__(self, model: ModelIR):
        self.model, self.digest = model, hash(model)

    def __hash__(self) -> int:
        return self.digest

    def __eq__(self, other) -> bool:
        return isinstance(other, Source) and (self.model is other.model or (
            self.digest == other.digest and self.model == other.model))


class Network(eqx.Module):
    """A built model: stacked parameters per term group (a pytree of arrays) + a static plan.

    ``params[k][j]`` is the dict (``W``, ``b``) of the j-th transform of term group ``k``, each
    array with a leading stacked axis ``E``. Everything the engine reads besides them is in
    ``plan`` (hashable, static); ``source`` holds the model for host-side lowering."""

    params: tuple
    plan: NetPlan = eqx.field(static=True)
    # per node group: None, or the log-precisions of a learned-precision gaussian group, ``[G]``
    # (precision = learned) or ``[G, *shape]`` (learned_diagonal); trained with the weights
    precisions: tuple = ()
    source: Source | None = eqx.field(static=True, default=None)

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
        """The model this network was built from (None for a bare plan)."""
        return self.source.model if self.source is not None else None

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
        """``{term name: per-transform parameter dicts}``, and for each node whose precision is
        learned ``{node: ({"log_precision": array},)}`` (a scalar, or the node's shape):
        independent of the stacking layout."""
        out = {n: self.term_params(n) for n in self.term_names()}
        for g, lp in zip(self.plan.groups, self.precisions):
            if lp is not None:
                out.update({n: ({"log_precision": lp[i]},) for i, n in enumerate(g.names)})
        return out

    def _precision_nodes(self) -> tuple[str, ...]:
        return tuple(n for g, lp in zip(self.plan.groups, self.precisions) if lp is not None
                     for n in g.names)

    def load_named_params(self, named: Mapping[str, Sequence[Mapping[str, Any]]]) -> "Network":
        """A copy with every term's parameters (and learned log-precisions) taken from ``named``
        (see :meth:`named_params`)."""
        missing = (set(self.term_names()) | set(self._precision_nodes())) - set(named)
        if missing:
            raise KeyError(f"missing parameters for terms or learned precisions: "
                           f"{', '.join(sorted(missing))}")
        net = self._load_named_terms(named)
        if not self._precision_nodes():
            return net
        lps = tuple(None if lp is None else jnp.stack(
            [jnp.asarray(named[n][0]["log_precision"], lp.dtype) for n in g.names]).reshape(lp.shape)
            for g, lp in zip(self.plan.groups, self.precisions))
        return eqx.tree_at(lambda nt: nt.precisions, net, lps)

    def _load_named_terms(self, named) -> "Network":
        new = []
        for k, tg in enumerate(self.plan.terms):
            steps = []
            for j, p in enumerate(self.params[k]):
                steps.append({key: jnp.stack([jnp.asarray(named[n][j][key], a.dtype)
                                              for n in tg.names]).reshape(a.shape)
                              for key, a in p.items()})
            new.append(tuple(steps))
        return eqx.tree_at(lambda net: net.params, self, tuple(new))

    def log_precision(self, gi: int):
        """The learned log-precisions of node group ``gi``, broadcastable against its
        activities ``[G, B, *shape]`` (``None`` when the group's precision is fixed)."""
        lp = self.precisions[gi] if gi < len(self.precisions) else None
        if lp is None:
            return None
        g = self.plan.groups[gi]
        if lp.ndim == 1:
            return lp.reshape((g.size,) + (1,) * (1 + len(g.shape)))
        return lp[:, None]

    def learned_precisions(self) -> dict[str, jax.Array]:
        """``{node: precision}`` (a scalar, or an array of the node's shape) for every node whose
        precision is learned."""
        return {n: jnp.exp(lp[i]) for g, lp in zip(self.plan.groups, self.precisions)
                if lp is not None for i, n in enumerate(g.names)}

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
    return Network(params=params, plan=plan, precisions=_init_precisions(plan, dtype),
                   source=Source(model))


def _init_precisions(plan: NetPlan, dtype) -> tuple:
    """Log-precisions 0 (precision 1) for each learned-precision group, None elsewhere."""
    if not any(g.learned_precision for g in plan.groups):
        return ()
    return tuple(
        None if not g.learned_precision else jnp.zeros(
            (g.size, *g.shape) if g.precision == "learned_diagonal" else (g.size,), dtype)
        for g in plan.groups)
