"""The equilibrium of a linear graph in closed form (DESIGN §5; docs/theory.md).

* :func:`equilibrated_energy` / :func:`equilibrium` — for a linear graph, ``F* = min_x F`` in
  closed form (dense solve, or conjugate gradients on the Hessian-vector operator when the system
  is large), with a :class:`SingularSystemWarning` and ``nan`` when the system is (numerically)
  singular — typically a free root without a prior, whose activity nothing anchors.
* :func:`chain_equilibrated_energy` — seed 002's formula for a deep linear chain:
  ``F* = (1/2B) Σ_i r_iᵀ S⁻¹ r_i`` with ``r = y − ŷ`` and ``S = I/π_L + Σ_l P_l P_lᵀ/π_l``, a
  rescaled MSE (``P_l = ∂ŷ/∂h_l``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from ._energy import forward_acts
from ._errors import Error
from ._network import Network
from ._query import QueryPlan
from ._spectrum import Spectrum, hessian_operator, hessian_spectrum
from ._theory import (as_query, batch_acts, batch_size, check_linear, energy_of_vector,
                      finite_or_none, quadratic_form)


class SingularSystemWarning(Error, UserWarning):
    """The activity Hessian of a linear graph is (numerically) singular: no unique equilibrium."""


def _eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


def free_roots_without_prior(net: Network, query) -> tuple[str, ...]:
    """Free (unclamped) parentless nodes with no prior: nothing anchors their activity."""
    q = as_query(net, query)
    out = []
    for grp, free in zip(net.plan.groups, q.free):
        if grp.has_parents or grp.prior is not None:
            continue
        out += [n for n, f in zip(grp.names, free) if f]
    return tuple(out)


def is_linear(net: Network) -> bool:
    try:
        check_linear(net)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Equilibrium:
    """The closed-form equilibrium of a linear graph on a batch: ``energy`` is ``F*`` (``nan`` when
    ``singular``), ``spectrum`` that of ``A = ∇²_x F`` (constant for a linear graph),
    ``free_roots`` the free parentless nodes without a prior, ``message`` the warning text."""

    energy: float
    singular: bool
    spectrum: Spectrum
    free_roots: tuple[str, ...] = ()
    message: str = ""
    method: str = "dense"

    def as_dict(self) -> dict:
        return {"equilibrated_energy": finite_or_none(self.energy), "singular": self.singular,
                "free_roots_without_prior": list(self.free_roots), "warning": self.message or None,
                "method": self.method, "hessian": self.spectrum.as_dict()}


def _singular_message(q: QueryPlan, spec: Spectrum, roots, rtol: float) -> str:
    msg = (f"query {q.name!r}: the linear system is singular (activity Hessian λ_min = "
           f"{spec.lambda_min:.3g}, λ_max = {spec.lambda_max:.3g}, relative threshold {rtol:.1g}): "
           "the equilibrium is not unique and F* is not meaningful")
    if roots:
        msg += (f"; free root(s) without a prior: {', '.join(roots)} — nothing anchors their "
                "activity. Clamp them in the query or give them a prior "
                "(prior = gaussian(0, 1))")
    return msg


def equilibrium(net: Network, query, batch, *, method: str = "auto", warn: bool = True,
                rtol: float | None = None) -> Equilibrium:
    """The exact equilibrium of a linear graph (see :func:`equilibrated_energy`)."""
    check_linear(net)
    q = as_query(net, query)
    h = batch_acts(net, q, batch)
    roots = free_roots_without_prior(net, q)
    rtol = 1e3 * _eps(h[0].dtype) if rtol is None else rtol
    spec = hessian_spectrum(net, q, h, method=method)
    singular = not (spec.lambda_min > rtol * abs(spec.lambda_max))
    if singular:
        msg = _singular_message(q, spec, roots, rtol)
        if warn:
            warnings.warn(msg, SingularSystemWarning, stacklevel=3)
        return Equilibrium(math.nan, True, spec, roots, msg, spec.method)
    if spec.method == "dense":
        A, b, c = (np.asarray(a, dtype=np.float64) for a in quadratic_form(net, q, h))
        F = float(c - 0.5 * b @ np.linalg.solve(A, b))
    else:
        from scipy.sparse.linalg import cg

        f, x0 = energy_of_vector(net, q, h)
        z = jnp.zeros_like(x0)
        b = -np.asarray(jax.jit(jax.grad(f))(z), dtype=np.float64)
        c = float(jax.jit(f)(z))
        op, _ = hessian_operator(net, q, h, scale="batch")  # constant: F is quadratic
        x, info = cg(op, b, rtol=max(_eps(h[0].dtype) * 10, 1e-10), maxiter=10 * op.shape[0])
        if info != 0:
            warnings.warn(f"query {q.name!r}: conjugate gradients did not converge ({info})",
                          SingularSystemWarning, stacklevel=3)
        F = float(c - 0.5 * b @ x)
    return Equilibrium(F, False, spec, roots, "", spec.method)


def equilibrated_energy(net: Network, query, batch, **kwargs) -> float:
    """``F* = min_x F`` for a linear graph (identity activations, gaussian energies; any topology,
    cycles included): ``F = ½ xᵀAx − bᵀx + c`` over the free vector, so ``F* = c − ½ bᵀA⁻¹b``.

    ``batch`` is a ``{node: array}`` dict (or ``Acts``) holding the clamped nodes. Returns ``nan``
    and warns (:class:`SingularSystemWarning`) when ``A`` is singular to ``rtol`` (default
    ``1000·eps`` relative to ``λ_max``), naming the free roots without a prior. Raises
    ``ValueError`` for a non-linear graph. Keywords go to :func:`equilibrium`."""
    return equilibrium(net, query, batch, **kwargs).energy


def _chain(net: Network, q: QueryPlan) -> list[str]:
    plan = net.plan
    names = plan.node_names
    par, ch = plan.parents_of, plan.children_of
    roots = [n for n in names if not par[n]]
    ok = len(roots) == 1 and all(len(par[n]) <= 1 and len(ch[n]) <= 1 for n in names)
    if ok:
        order = [roots[0]]
        while ch[order[-1]]:
            order.append(ch[order[-1]][0])
        ok = len(order) == len(names)
    if ok:
        ok = set(q.clamp) == {order[0], order[-1]}
    if not ok:
        raise ValueError("not a deep linear chain: the formula needs a path x -> h1 -> ... -> y "
                         "(one term an edge) with a query that clamps exactly both ends")
    if sum(t.size for t in plan.terms) != len(names) - 1:
        raise ValueError("not a deep linear chain: one term an edge")
    return order


def chain_equilibrated_energy(net: Network, query, batch):
    """Seed 002's rescaled MSE for a deep linear chain ``x -> h1 -> ... -> h_{L-1} -> y`` whose
    query clamps ``x`` and ``y``: ``F* = (1/2B) Σ_i r_iᵀ S⁻¹ r_i``, ``r = y − ŷ`` (``ŷ`` the
    forward pass, biases included), ``S = I/π_y + Σ_l P_l P_lᵀ/π_l``, ``P_l = ∂ŷ/∂h_l`` (the
    product of the weights above hidden layer l, parameterisation scales folded in), π the node
    precisions. Equal to :func:`equilibrated_energy` (a test checks to 1e-6) but costs only
    ``d_y × d_y`` solves, and is a JAX scalar differentiable in the weights: by the envelope
    theorem its gradient is the PC weight gradient at the exact equilibrium."""
    check_linear(net)
    q = as_query(net, query)
    order = _chain(net, q)
    y_name, hidden = order[-1], order[1:-1]
    h = batch_acts(net, q, batch)
    B = batch_size(h)
    plan = net.plan

    def prec(name):
        return float(plan.groups[plan.loc[name][0]].precision)

    h_fwd = forward_acts(net, h, tuple(order[1:]))
    yhat = net.get(h_fwd, y_name).reshape(B, -1)
    y = net.get(h, y_name).reshape(B, -1)
    S = jnp.eye(y.shape[1], dtype=y.dtype) / prec(y_name)
    one = tuple(a[:, :1] for a in h)
    for k, name in enumerate(hidden):
        above = tuple(order[k + 2:])
        g, i = plan.loc[name]

        def out(v, g=g, i=i, above=above):
            hh = list(one)
            hh[g] = hh[g].at[i, 0].set(v.reshape(hh[g].shape[2:]))
            return net.get(forward_acts(net, tuple(hh), above), y_name).reshape(-1)

        v0 = jnp.zeros((int(np.prod(net.node_shape(name))),), y.dtype)
        P = jax.jacfwd(out)(v0)
        S = S + P @ P.T / prec(name)
    r = y - yhat
    return jnp.sum(r * jnp.linalg.solve(S, r.T).T) / (2 * B)
