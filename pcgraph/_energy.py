"""The energy F, per-node energies, predictions μ and the forward pass (DESIGN §1).

    μ_v = φ_v( Σ_{terms t into v} s_t · chain_t(ψ_t(h_u)) )          ε_v = h_v − μ_v
    F   = (1/B) Σ_batch Σ_v E_v

* gaussian:    E_v = ½ π_v ‖ε_v‖²  (π_v the node's precision, default 1)
* gaussian, learned precision: E_v = ½ Σ_i (π_vi ε_vi² − log π_vi)  (π = exp of a parameter:
  one per node, or one per element with ``learned_diagonal``)
* categorical: E_v = −Σ h_v · log_softmax(pre_v)   (pre_v the summed input; φ_v is ignored)
* bernoulli:   E_v = Σ softplus(pre_v) − h_v·pre_v   (pre_v the logits; h_v binary or in [0, 1])
* laplace:     E_v = ‖ε_v‖₁ / b   (b the node's ``scale``)
* prior:       E_v = ½ ‖(h_v − m)/σ‖²  on a parentless node that declares ``prior = gaussian(m, σ)``

**Sum over nodes and features, mean over the batch.** Given a ``QueryPlan``, free leaves are left
out (their value is their prediction, the exact minimiser of their term) and so is the
computation of their predictions. Every function here is pure and jit-able; activities are
``Acts`` (one ``[G, B, *shape]`` array per node group, see ``_network``).
"""

from __future__ import annotations

from typing import Collection, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._custom_types import NodeValues, Scalar
from ._errors import Error
from ._graph import forward_order, parent_graph
from ._kernels import activation, apply_member, preactivations, split_members
from ._network import Network
from ._plan import Acts, NodeGroup
from ._query import QueryPlan


LOW_PRECISION = (jnp.bfloat16, jnp.float16)


def accumulation_dtype(dtype):
    """The dtype energies are computed in: float32 for bf16/fp16 activities (``precision =
    bf16``: low-precision storage and matmuls, fp32 energies), else the activities' own."""
    return jnp.float32 if dtype in LOW_PRECISION else dtype


def _acc(x):
    return x if x is None or x.dtype not in LOW_PRECISION else x.astype(jnp.float32)


def _all_need(net: Network) -> tuple[bool, ...]:
    return tuple(g.has_parents or g.prior is not None for g in net.plan.groups)


def _mask(counts: Sequence[bool] | None, ndim: int, dtype):
    """``None`` when every node counts, else a ``[G, 1, ...]`` 0/1 constant."""
    if counts is None or all(counts):
        return None
    return jnp.asarray(np.asarray(counts, dtype=np.float64), dtype).reshape(
        (len(counts),) + (1,) * (ndim - 1)
    )


def _likelihood(net: Network, gi: int, grp: NodeGroup, hg, pre):
    """−log p(h_v | μ_v) per element, up to a constant (one registry entry per energy)."""
    if grp.energy == "categorical":
        G, B = hg.shape[:2]
        logp = jax.nn.log_softmax(pre.reshape(G, B, -1), axis=-1)
        return -(hg.reshape(G, B, -1) * logp)
    if grp.energy == "bernoulli":  # pre is the logit a: −[h log σ(a) + (1 − h) log(1 − σ(a))]
        return jax.nn.softplus(pre) - hg * pre
    eps = hg - activation(grp.act)(pre)
    if grp.energy == "laplace":
        return jnp.abs(eps) / grp.scale
    lp = net.log_precision(gi)
    if lp is None:
        return (0.5 * grp.precision) * (eps * eps)
    # learned precision π = exp(lp): ½ π ε² − ½ log π per element, so that F carries the
    # −½ log det Π term of the Gaussian's normaliser and π cannot grow without bound
    return 0.5 * (jnp.exp(lp) * (eps * eps) - lp)


def _elementwise(net: Network, gi: int, grp: NodeGroup, hg, pre):
    """Energy density of a node group (same shape as ``hg``, or ``[G, B, F]`` for categorical)."""
    if grp.has_parents:
        return _likelihood(net, gi, grp, hg, pre)
    if grp.prior is not None:
        _, m, s = grp.prior
        z = (hg - m) / s
        return 0.5 * (z * z)
    return None


def _group_parts(net: Network, h: Acts, query: QueryPlan | None, observed=None):
    plan = net.plan
    if query is not None:
        query.check(net)
    need = query.need if query is not None else _all_need(net)
    pre = preactivations(net, h, need)
    for gi, grp in enumerate(plan.groups):
        if not need[gi]:
            continue
        dens = _elementwise(net, gi, grp, _acc(h[gi]), _acc(pre[gi]))
        if dens is None:
            continue
        m = _mask(query.counts[gi] if query is not None else None, dens.ndim, dens.dtype)
        w = _missing_out(query, observed, gi)
        if w is not None:  # the missing elements of a partly clamped leaf are free leaves
            w = w.reshape(dens.shape)
            m = w if m is None else m * w
        yield gi, dens, m


def _missing_out(query, observed, gi):
    """1 − (partly clamped leaf member) · (1 − observed): zero on missing leaf elements."""
    sel = getattr(query, "partial_leaf", ()) if query is not None else ()
    if observed is None or not sel or not any(sel[gi]):
        return None
    obs = observed[gi]
    pl = _mask(sel[gi], obs.ndim, obs.dtype)
    return obs if pl is None else 1 - pl * (1 - obs)


def energy(net: Network, h: Acts, query: QueryPlan | None = None, observed=None) -> Scalar:
    """F(h, θ): a scalar. With ``query``, free leaves are left out (see module docstring); with
    ``observed`` (per group ``None`` or a 0/1 ``[G, B, *shape]`` mask, see ``observed_masks``)
    so are the missing elements of partly clamped leaves."""
    B = h[0].shape[1]
    total = jnp.zeros((), accumulation_dtype(h[0].dtype))
    for _, dens, m in _group_parts(net, h, query, observed):
        total = total + (jnp.sum(dens) if m is None else jnp.sum(dens * m))
    return total / B


def group_energies(net: Network, h: Acts, query: QueryPlan | None = None,
                   observed=None) -> list:
    """Per node group, the per-node energies ``[G]`` (mean over the batch), or ``None``."""
    out: list = [None] * len(net.plan.groups)
    B = h[0].shape[1]
    for gi, dens, m in _group_parts(net, h, query, observed):
        if m is not None:
            dens = dens * m
        out[gi] = jnp.sum(dens.reshape(dens.shape[0], -1), axis=1) / B
    return out


def node_energies(net: Network, h: Acts, query: QueryPlan | None = None,
                  observed=None) -> dict[str, Scalar]:
    """``{node: E_v}`` (mean over the batch) for every node with an energy term in F; with
    ``observed`` (as for :func:`energy`) the missing elements of partly clamped leaves are left
    out, so the values sum to ``energy(net, h, query, observed)``."""
    out = {}
    for gi, e in enumerate(group_energies(net, h, query, observed)):
        if e is None:
            continue
        for i, n in enumerate(net.plan.groups[gi].names):
            if query is None or query.counts[gi][i]:
                out[n] = e[i]
    return out


def _predict(grp: NodeGroup, pre):
    if grp.energy == "bernoulli":
        return jax.nn.sigmoid(pre)
    if grp.energy == "categorical":
        shape = pre.shape
        return jax.nn.softmax(pre.reshape(*shape[:2], -1), axis=-1).reshape(shape)
    return activation(grp.act)(pre)


def predict_groups(net: Network, h: Acts, need: Sequence[bool] | None = None) -> list:
    """μ per node group (``None`` for groups without parents or not in ``need``). Categorical
    nodes predict the probabilities ``softmax(pre)``."""
    pre = preactivations(net, h, need)
    return [
        None if p is None else _predict(grp, p) for grp, p in zip(net.plan.groups, pre)
    ]


def predictions(net: Network, h: Acts) -> dict[str, NodeValues]:
    """``{node: μ_v}`` for every node with parents (categorical: ``softmax`` of the logits)."""
    out = {}
    for grp, mu in zip(net.plan.groups, predict_groups(net, h)):
        if mu is not None:
            for i, n in enumerate(grp.names):
                out[n] = mu[i]
    return out


def set_leaves(net: Network, h: Acts, query: QueryPlan, observed=None) -> Acts:
    """Free leaves take their prediction (μ, or softmax of the logits for categorical), and so do
    the missing elements of partly clamped leaves (with ``observed``)."""
    keep = [_missing_out(query, observed, gi) for gi in range(len(h))]
    need = tuple(any(lf) or k is not None for lf, k in zip(query.leaf, keep))
    if not any(need):
        return h
    mu = predict_groups(net, h, need)
    out = list(h)
    for gi, lf in enumerate(query.leaf):
        if not need[gi]:
            continue
        if keep[gi] is None and all(lf):
            out[gi] = mu[gi]
            continue
        m = _mask(lf, h[gi].ndim, h[gi].dtype) if any(lf) else jnp.zeros((), h[gi].dtype)
        if keep[gi] is not None:
            m = 1 - (1 - m) * keep[gi]
        out[gi] = h[gi] * (1 - m) + mu[gi] * m
    return tuple(out)


def node_prediction(net: Network, h: Acts, name: str, values: Mapping[str, jax.Array] | None = None,
                    members: dict | None = None,
                    parents: Collection[str] | None = None) -> NodeValues:
    """μ of one node from its parents' values (``values`` overrides ``h`` node by node).
    ``members`` caches each term group's per-member parameters across calls (a forward pass);
    ``parents`` keeps only the terms whose source is one of them (a sweep leaving edges out)."""
    plan = net.plan
    values = values or {}
    members = {} if members is None else members
    gi, _ = plan.loc[name]
    grp = plan.groups[gi]
    incoming = plan.incoming_of[name]
    if not incoming:
        raise ValueError(f"node {name!r} has no parents, so no prediction")
    pre = None
    for k, e in incoming:
        tg = plan.terms[k]
        src = plan.groups[tg.src].names[tg.src_idx[e]]
        if parents is not None and src not in parents:
            continue
        if src in values:
            x = values[src]
        else:
            sg, si = plan.loc[src]
            x = h[sg][si]
        if k not in members:
            members[k] = split_members(net.params[k], tg.size)
        y = apply_member(tg, members[k][e], e, x)
        pre = y if pre is None else pre + y
    if pre is None:
        raise ValueError(
            f"node {name!r} has none of the parents {tuple(parents)} to predict it from")
    return _predict(grp, pre[None])[0]


def forward_acts(net: Network, h: Acts, order: Sequence[str]) -> Acts:
    """Set the nodes of ``order`` (each after its parents) to their predictions, in order."""
    if not order:
        return h
    vals: dict[str, jax.Array] = {}
    members: dict = {}
    for v in order:
        vals[v] = node_prediction(net, h, v, vals, members)
    out = list(h)
    for gi, grp in enumerate(net.plan.groups):
        if not any(n in vals for n in grp.names):
            continue
        out[gi] = jnp.stack([vals[n] if n in vals else h[gi][i] for i, n in enumerate(grp.names)])
    return tuple(out)


class ForwardError(Error, ValueError):
    """A forward pass was asked where none exists (cycle, or unclamped root)."""


def topological_order(net: Network, clamped: Sequence[str]) -> tuple[str, ...]:
    """The unclamped nodes in an order where each comes after its parents (natural tie-break).

    Raises ``ForwardError`` naming a cycle or the unclamped roots (Prop. 3.2 of seed 004)."""
    plan = net.plan
    G = parent_graph({v: plan.parents_of[v] for v in plan.node_names})
    order, problems = forward_order(G, clamped)
    if problems:
        raise ForwardError(
            "no forward pass exists (it needs a DAG with every root clamped, Prop. 3.2): "
            + "; ".join(problems)
            + ". Use inference, or init = mem / auto for initialisation."
        )
    return order


def forward(net: Network, clamped: Mapping[str, NodeValues]) -> dict[str, NodeValues]:
    """The forward pass from clamped roots: every other node set to its prediction, in
    topological order. A DAG-only operation: raises ``ForwardError`` otherwise."""
    order = topological_order(net, tuple(clamped))
    h = net.pack(dict(clamped))
    return net.unpack(forward_acts(net, h, order))
