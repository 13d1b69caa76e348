"""Theory tools (DESIGN §5): the activity Hessian and the closed forms of linear graphs.

The *free vector* ``x`` is every inference variable of a query (free, non-leaf nodes) flattened in
activity order: node group by group, node by node, then batch and features. F is a mean over the
batch, so the Hessian is block-diagonal over samples with blocks ``(1/B)·A_sample``.

For a graph whose transforms are all linear (identity φ and ψ, gaussian energies, gaussian priors)
F is quadratic in ``x``: ``F = ½ xᵀ A x − bᵀ x + c`` with ``A = ∇²F``, ``b = −∇F(0)``, ``c = F(0)``
(read off with ``jax.hessian``/``jax.grad`` at 0), so the equilibrium is ``x* = A⁻¹ b``
(``jnp.linalg.solve``) and ``F* = c − ½ bᵀ A⁻¹ b`` — for any linear graph, cycles included.
"""

from __future__ import annotations

import math
from typing import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._energy import energy, set_leaves
from ._infer import clamp_data, merge_free
from ._network import Network
from ._plan import Acts
from ._query import QueryPlan, compile_query


def as_query(net: Network, query) -> QueryPlan:
    return query if isinstance(query, QueryPlan) else compile_query(net, query)


def batch_acts(net: Network, query, batch) -> Acts:
    """``Acts`` from a ``{node: array}`` batch (clamped nodes set, zeros elsewhere) or as given."""
    if isinstance(batch, Mapping):
        return clamp_data(net, as_query(net, query), batch)
    return tuple(batch)


def batch_size(h: Acts) -> int:
    return int(h[0].shape[1])


def finite_or_none(x):
    """``x`` as a float, or ``None`` when it is missing or not finite (for JSON)."""
    return float(x) if x is not None and math.isfinite(x) else None


def free_vector(net: Network, query, h: Acts):
    """``(x, to_acts)``: the inference variables of ``h`` as a vector and the map back to ``Acts``
    (clamped entries and everything else taken from ``h``)."""
    q = as_query(net, query)
    fg = q.free_groups
    base = tuple(h[g] for g in fg)
    sizes, idx = [], []
    offset = 0
    for g, a in zip(fg, base):
        m = np.broadcast_to(np.asarray(q.free[g]).reshape((len(q.free[g]),) + (1,) * (a.ndim - 1)),
                            a.shape).reshape(-1)
        idx.append(offset + np.nonzero(m)[0])
        sizes.append(a.size)
        offset += a.size
    idx = np.concatenate(idx) if idx else np.zeros((0,), np.int64)
    flat = jnp.concatenate([a.reshape(-1) for a in base]) if base else jnp.zeros((0,))

    def to_acts(x):
        full = flat.at[idx].set(x)
        parts, o = [], 0
        for a, n in zip(base, sizes):
            parts.append(full[o:o + n].reshape(a.shape))
            o += n
        return merge_free(h, q, tuple(parts))

    return flat[idx], to_acts


def energy_of_vector(net: Network, query, h: Acts):
    """``(f, x0)``: F as a function of the free vector, and the free vector of ``h``."""
    q = as_query(net, query)
    x0, to_acts = free_vector(net, q, h)
    return (lambda x: energy(net, to_acts(x), q)), x0


@eqx.filter_jit
def dense_hessian(net: Network, q: QueryPlan, h: Acts):
    f, x0 = energy_of_vector(net, q, h)
    return jax.hessian(f)(x0)


def activity_hessian(net: Network, query, h: Acts):
    """``∇²_x F`` at ``h`` over the free vector (``[n, n]``)."""
    return dense_hessian(net, as_query(net, query), h)


def condition_number(H):
    """``max|λ| / min|λ|`` of a symmetric matrix (``inf`` when singular)."""
    lam = jnp.abs(jnp.linalg.eigvalsh(H))
    return jnp.max(lam) / jnp.min(lam)


def check_linear(net: Network) -> None:
    """Raise unless every node activation, pre-activation and energy is linear-gaussian."""
    bad = [f"node group {g.names[0]}…: act {g.act}" for g in net.plan.groups
           if g.act not in ("identity", "linear") and g.has_parents]
    bad += [f"node group {g.names[0]}…: {g.energy} energy" for g in net.plan.groups
            if g.energy != "gaussian" and g.has_parents]
    bad += [f"term {t.names[0]}…: pre {t.pre}" for t in net.plan.terms
            if t.pre not in ("identity", "linear")]
    bad += [f"term {t.names[0]}…: maxpool" for t in net.plan.terms
            if any(s.kind == "maxpool" for s in t.steps)]
    if bad:
        raise ValueError("not a linear graph: " + "; ".join(bad))


def linear_system(net: Network, query, h: Acts):
    """``(A, b, c)`` with ``F = ½ xᵀAx − bᵀx + c`` over the free vector (clamped data from ``h``)."""
    check_linear(net)
    return quadratic_form(net, as_query(net, query), h)


@eqx.filter_jit
def quadratic_form(net: Network, q: QueryPlan, h: Acts):
    f, x0 = energy_of_vector(net, q, h)
    z = jnp.zeros_like(x0)
    return jax.hessian(f)(z), -jax.grad(f)(z), f(z)


def linear_equilibrium(net: Network, query, h: Acts):
    """``(h*, F*)``: the exact equilibrium ``x* = A⁻¹b`` as ``Acts`` and ``F* = c − ½ bᵀA⁻¹b``."""
    q = as_query(net, query)
    A, b, c = linear_system(net, q, h)
    return _solve(net, q, h, A, b, c)


@eqx.filter_jit
def _solve(net, q, h, A, b, c):
    x = jnp.linalg.solve(A, b)
    _, to_acts = free_vector(net, q, h)
    return set_leaves(net, to_acts(x), q), c - 0.5 * b @ x
