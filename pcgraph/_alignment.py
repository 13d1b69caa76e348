"""PC's weight update against BP's gradient (DESIGN §5; docs/theory.md).

:func:`update_alignment` is the cosine between the PC weight gradient ``∂F/∂θ`` at the relaxed
activities and the BP gradient ``∂L/∂θ`` of the output loss through the forward pass
(:func:`bp_loss`), overall and per edge term.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import numpy as np

from ._energy import energy, forward_acts, topological_order
from ._network import Network
from ._plan import Acts
from ._query import QueryPlan
from ._theory import as_query, batch_acts, finite_or_none


@dataclass(frozen=True)
class Alignment:
    """``cosine`` between the PC weight gradient ``∂F/∂θ`` (at the relaxed activities) and the BP
    gradient ``∂L/∂θ`` over all parameters; ``per_term`` per edge term; the two norms."""

    cosine: float
    per_term: dict
    pc_norm: float
    bp_norm: float

    def as_dict(self) -> dict:
        return {"cosine": finite_or_none(self.cosine),
                "per_term": {k: finite_or_none(v) for k, v in self.per_term.items()},
                "pc_norm": self.pc_norm, "bp_norm": self.bp_norm}


def _bp_plan(net: Network, q: QueryPlan):
    order = topological_order(net, q.clamp)  # ForwardError unless a DAG with roots clamped
    q_out = q.with_counts(q.clamped_targets)
    if not any(any(c) for c in q_out.counts):
        raise ValueError(f"query {q.name!r} clamps no node with parents: no output loss for BP")
    return order, q_out


def bp_loss(net: Network, query, batch):
    """The BP loss of a query: the energy of its clamped non-root nodes at the forward pass from
    the clamped roots (cross-entropy for categorical nodes, ½π‖ε‖² for gaussian)."""
    q = as_query(net, query)
    order, q_out = _bp_plan(net, q)
    h = batch_acts(net, q, batch)
    return energy(net, forward_acts(net, h, order), q_out)


@eqx.filter_jit
def _grads(net: Network, q: QueryPlan, q_out: QueryPlan, order, h: Acts, h_relaxed: Acts):
    g_pc = eqx.filter_grad(lambda n: energy(n, h_relaxed, q))(net)
    g_bp = eqx.filter_grad(lambda n: energy(n, forward_acts(n, h, order), q_out))(net)
    return g_pc, g_bp


def _cos(a, b) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else math.nan


def _flat(tree) -> np.ndarray:
    leaves = [np.asarray(x, dtype=np.float64).reshape(-1) for x in jax.tree_util.tree_leaves(tree)]
    return np.concatenate(leaves) if leaves else np.zeros(0)


def update_alignment(net: Network, query, batch, h_relaxed: Acts) -> Alignment:
    """Cosine between the PC weight gradient at ``h_relaxed`` and the BP gradient on ``batch``
    (the update directions are their negatives, so the cosine is the same). Raises
    ``ForwardError``/``ValueError`` when the query has no forward pass or no output loss."""
    q = as_query(net, query)
    order, q_out = _bp_plan(net, q)
    h = batch_acts(net, q, batch)
    g_pc, g_bp = _grads(net, q, q_out, order, h, tuple(h_relaxed))
    per = {}
    for name in net.term_names():
        a, b = _flat(g_pc.term_params(name)), _flat(g_bp.term_params(name))
        if a.size:
            per[name] = _cos(a, b)
    a, b = _flat(g_pc.params), _flat(g_bp.params)
    return Alignment(_cos(a, b), per, float(np.linalg.norm(a)), float(np.linalg.norm(b)))
