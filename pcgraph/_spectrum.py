"""The activity Hessian's spectrum, matrix-free (DESIGN §5; docs/theory.md).

:func:`hessian_spectrum` gives the extreme eigenvalues and the condition number of ``∇²_x F``:
dense (``jnp.linalg.eigvalsh``) for small systems, or matrix-free — a
``scipy.sparse.linalg.LinearOperator`` whose product is a Hessian-vector product (``jax.jvp`` of
``jax.grad``, forward over reverse, one jitted call) and ARPACK's implicitly restarted Lanczos
(``scipy.sparse.linalg.eigsh``). Nothing of size ``n²`` is formed, so it runs on a 128-layer,
width-512 network.

λ_min is found as ``σ − λ_max(σI − H)`` with ``σ = λ_max(H)``: the same Krylov spaces as
``which="SA"`` on ``H``, but ARPACK's stopping test (residual ≤ ``tol``·|Ritz value|) is then
relative to the spectrum's width ``λ_max − λ_min`` instead of to λ_min itself. For a deep network,
whose λ_min sits in a cluster near 0, the relative test on ``H`` asks for an absolute accuracy of
``tol·λ_min`` and did not finish in 674 products at depth 128; the shifted one asks for
``tol·(λ_max − λ_min)``, which is what a condition number needs. The residual ``‖Hv − λ_min v‖``
of the returned vector is reported either way.

Eigenvalue convention: the Hessian is reported per sample (``scale="sample"``, ``B·∇²F``; F is a
batch mean), the convention of the activity step sizes (``activity_scale="sample"``), so GD
inference with step ``lr`` is stable iff ``lr < 2/λ_max``. ``scale="batch"`` gives ``∇²F`` itself.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._network import Network
from ._plan import Acts
from ._query import QueryPlan
from ._theory import as_query, batch_size, dense_hessian, energy_of_vector, finite_or_none

#: largest free vector for which ``method="auto"`` builds the dense Hessian
DENSE_MAX = 1024
#: ARPACK's Krylov basis size (``ncv``) by default: n·NCV float64 numbers are kept
NCV = 128


@dataclass(frozen=True)
class Spectrum:
    """Extremes of the activity Hessian's spectrum. ``cond = λ_max/λ_min`` when ``λ_min > 0``,
    ``inf`` otherwise (an indefinite or singular Hessian has no condition number for inference).
    ``matvecs`` counts Hessian-vector products (0 for ``dense``); ``converged`` is False when
    Lanczos stopped at its iteration cap (the values are then its best estimates: λ_min an upper
    bound, so ``cond`` a lower bound); ``residual`` is ``‖Hv − λ_min v‖`` of λ_min's unit
    eigenvector estimate (``None`` for ``dense``)."""

    lambda_min: float
    lambda_max: float
    cond: float
    n: int
    method: str
    scale: str
    converged: bool = True
    matvecs: int = 0
    residual: float | None = None

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cond"] = finite_or_none(self.cond)
        return d


def _cond(lo: float, hi: float) -> float:
    return hi / lo if lo > 0 else math.inf


@eqx.filter_jit
def _hvp(net: Network, q: QueryPlan, h: Acts, v):
    f, x0 = energy_of_vector(net, q, h)
    return jax.jvp(jax.grad(f), (x0,), (v.astype(x0.dtype),))[1]


@eqx.filter_jit
def _free_size(net: Network, q: QueryPlan, h: Acts):
    return energy_of_vector(net, q, h)[1]


def free_size(net: Network, query, h: Acts) -> int:
    """The number of inference variables of ``query`` at ``h`` (traced, not computed)."""
    q = as_query(net, query)
    return int(jax.eval_shape(lambda: _free_size(net, q, h)).shape[0])


def hessian_operator(net: Network, query, h: Acts, *, scale: str = "sample"):
    """``(op, counter)``: ``∇²_x F`` at ``h`` as a ``scipy.sparse.linalg.LinearOperator``
    (float64 in and out; products computed by JAX in the network's dtype) and a one-item list
    counting the products made."""
    from scipy.sparse.linalg import LinearOperator

    q = as_query(net, query)
    n = free_size(net, q, h)
    s = float(batch_size(h)) if scale == "sample" else 1.0
    count = [0]

    def mv(v):
        count[0] += 1
        v = jnp.asarray(np.asarray(v, dtype=np.float64).reshape(-1))
        return s * np.asarray(_hvp(net, q, h, v), dtype=np.float64)

    return LinearOperator((n, n), matvec=mv, dtype=np.float64), count


def _eigsh(op, which: str, **kw) -> tuple[float, np.ndarray | None, bool]:
    """ARPACK's extreme eigenpair: ``(value, vector or None, converged)`` (``nan`` when ARPACK
    stopped at its cap without keeping a Ritz value)."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh

    try:
        lam, vec = eigsh(op, k=1, which=which, **kw)
        return float(lam[0]), vec[:, 0], True
    except ArpackNoConvergence as e:
        if len(e.eigenvalues):
            return float(e.eigenvalues[0]), np.asarray(e.eigenvectors)[:, 0], False
        return math.nan, None, False


def hessian_spectrum(net: Network, query, h: Acts, *, method: str = "auto", scale: str = "sample",
                     tol: float = 1e-6, maxiter: int | None = None, ncv: int | None = None,
                     seed: int = 0) -> Spectrum:
    """λ_min, λ_max and the condition number of the activity Hessian at ``h``.

    ``method``: ``"dense"`` (``jax.hessian`` + ``eigvalsh``; ``n²`` memory), ``"lanczos"``
    (matrix-free: ``eigsh(which="LA")`` on :func:`hessian_operator` for λ_max, then on
    ``λ_max·I − H`` for λ_min, see the module docstring; ``tol`` is ARPACK's relative accuracy,
    for λ_min relative to ``λ_max − λ_min``; ``maxiter`` its restart cap, default 300; ``ncv`` its
    Krylov basis size, default ``NCV``) or ``"auto"`` (dense up to ``DENSE_MAX`` free variables).
    When ARPACK stops at ``maxiter`` the result says ``converged=False`` and holds its best
    estimate (an upper bound on λ_min, from LOBPCG if ARPACK kept none), so ``cond`` is a lower
    bound; ``residual`` says how far that estimate is from an eigenpair."""
    if scale not in ("sample", "batch"):
        raise ValueError(f"scale must be 'sample' or 'batch', got {scale!r}")
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"method must be auto, dense or lanczos, got {method!r}")
    q = as_query(net, query)
    n = free_size(net, q, h)
    if n == 0:
        raise ValueError(f"query {q.name!r} has no inference variables: no activity Hessian")
    if method == "dense" or (method == "auto" and n <= DENSE_MAX) or n <= 2:
        s = float(batch_size(h)) if scale == "sample" else 1.0
        lam = np.linalg.eigvalsh(np.asarray(dense_hessian(net, q, h), dtype=np.float64)) * s
        lo, hi = float(lam[0]), float(lam[-1])
        return Spectrum(lo, hi, _cond(lo, hi), n, "dense", scale)
    from scipy.sparse.linalg import LinearOperator, lobpcg

    op, count = hessian_operator(net, q, h, scale=scale)
    rng = np.random.default_rng(seed)
    kw = dict(tol=tol, maxiter=maxiter or 300, ncv=min(n - 1, ncv or NCV),
              v0=rng.standard_normal(n))
    hi, _, ok_hi = _eigsh(op, "LA", **kw)
    if math.isfinite(hi):
        sigma = hi
        shifted = LinearOperator((n, n), matvec=lambda v: sigma * np.ravel(v) - op.matvec(np.ravel(v)),
                                 dtype=np.float64)
        theta, vec, ok_lo = _eigsh(shifted, "LA", **kw)
        lo = sigma - theta
    else:
        lo, vec, ok_lo = math.nan, None, False
    if vec is None:
        # ARPACK kept no Ritz value: LOBPCG's current estimate, an upper bound on λ_min
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lam, vecs = lobpcg(op, rng.standard_normal((n, 4)), largest=False, tol=tol,
                               maxiter=max(20, kw["maxiter"] // 4))
        i = int(np.argmin(lam))
        lo, vec = float(lam[i]), vecs[:, i]
    vec = vec / np.linalg.norm(vec)
    residual = float(np.linalg.norm(op.matvec(vec) - lo * vec))
    return Spectrum(lo, hi, _cond(lo, hi), n, "lanczos", scale, ok_hi and ok_lo, count[0],
                    residual)
