"""Analysis of a network on a batch (DESIGN §5; docs/theory.md): what ``pcgraph analyse`` reports.

* :func:`hessian_spectrum` — the extreme eigenvalues and the condition number of the activity
  Hessian ``∇²_x F``, dense (``jnp.linalg.eigvalsh``) for small systems or matrix-free: a
  ``scipy.sparse.linalg.LinearOperator`` whose product is a Hessian-vector product
  (``jax.jvp`` of ``jax.grad``, forward over reverse, one jitted call) and ARPACK's Lanczos
  (``scipy.sparse.linalg.eigsh``) for the largest and the smallest algebraic eigenvalue. Nothing
  of size ``n²`` is ever formed, so it runs on a 128-layer, width-512 network.
* :func:`equilibrated_energy` — for a linear graph, ``F* = min_x F`` in closed form (dense solve, or
  conjugate gradients on the same operator when the system is large), with a
  :class:`SingularSystemWarning` and ``nan`` when the system is (numerically) singular — typically
  a free root without a prior, whose activity nothing anchors.
* :func:`chain_equilibrated_energy` — seed 002's formula for a deep linear chain:
  ``F* = (1/2B) Σ_i r_iᵀ S⁻¹ r_i`` with ``r = y − ŷ`` and ``S = I/π_L + Σ_l P_l P_lᵀ/π_l``, a
  rescaled MSE (``P_l = ∂ŷ/∂h_l``).
* :func:`update_alignment` — the cosine between the PC weight gradient ``∂F/∂θ`` at the relaxed
  activities and the BP gradient ``∂L/∂θ`` of the output loss through the forward pass.
* :func:`analyse_query` — all of it for one query on one batch: per-node energy at
  initialisation and after T inference steps, the spectrum, the alignment, and for linear graphs
  the equilibrated energy.

Eigenvalue convention: the Hessian is reported per sample (``scale="sample"``, ``B·∇²F``; F is a
batch mean), the convention of the activity step sizes (``activity_scale="sample"``), so GD
inference with step ``lr`` is stable iff ``lr < 2/λ_max``. ``scale="batch"`` gives ``∇²F`` itself.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._config import GradientDescent, Inference, Initialisation, resolve_config, with_steps
from ._errors import Error
from ._energy import energy, forward_acts, node_energies, topological_order
from ._infer import clamp_data, infer
from ._network import Network
from ._plan import Acts
from ._query import QueryPlan, compile_query
from ._theory import as_query, dense_hessian, quadratic_form, check_linear, energy_of_vector

#: largest free vector for which ``method="auto"`` builds the dense Hessian
DENSE_MAX = 1024


class SingularSystemWarning(Error, UserWarning):
    """The activity Hessian of a linear graph is (numerically) singular: no unique equilibrium."""


# ------------------------------------------------------------------------------ helpers
def _acts(net: Network, q: QueryPlan, batch) -> Acts:
    """``Acts`` from a ``{node: array}`` batch (clamped nodes set, zeros elsewhere) or as given."""
    if isinstance(batch, Mapping):
        return clamp_data(net, q, batch)
    return tuple(batch)


def _batch_size(h: Acts) -> int:
    return int(h[0].shape[1])


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


# ------------------------------------------------------------------------------ spectrum
@dataclass(frozen=True)
class Spectrum:
    """Extremes of the activity Hessian's spectrum. ``cond = λ_max/λ_min`` when ``λ_min > 0``,
    ``inf`` otherwise (an indefinite or singular Hessian has no condition number for inference).
    ``matvecs`` counts Hessian-vector products (0 for ``dense``); ``converged`` is False when
    Lanczos stopped at its iteration cap (the values are then its best estimates)."""

    lambda_min: float
    lambda_max: float
    cond: float
    n: int
    method: str
    scale: str
    converged: bool = True
    matvecs: int = 0

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cond"] = _finite_or_none(self.cond)
        return d


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(x) else None


def _cond(lo: float, hi: float) -> float:
    return hi / lo if lo > 0 else math.inf


@eqx.filter_jit
def _hvp(net: Network, q: QueryPlan, h: Acts, v):
    f, x0 = energy_of_vector(net, q, h)
    return jax.jvp(jax.grad(f), (x0,), (v.astype(x0.dtype),))[1]


@eqx.filter_jit
def _free_size(net: Network, q: QueryPlan, h: Acts):
    return energy_of_vector(net, q, h)[1]


def hessian_operator(net: Network, query, h: Acts, *, scale: str = "sample"):
    """``(op, counter)``: ``∇²_x F`` at ``h`` as a ``scipy.sparse.linalg.LinearOperator``
    (float64 in and out; products computed by JAX in the network's dtype) and a one-item list
    counting the products made."""
    from scipy.sparse.linalg import LinearOperator

    q = as_query(net, query)
    n = int(jax.eval_shape(lambda: _free_size(net, q, h)).shape[0])
    s = float(_batch_size(h)) if scale == "sample" else 1.0
    count = [0]

    def mv(v):
        count[0] += 1
        v = jnp.asarray(np.asarray(v, dtype=np.float64).reshape(-1))
        return s * np.asarray(_hvp(net, q, h, v), dtype=np.float64)

    return LinearOperator((n, n), matvec=mv, dtype=np.float64), count


def hessian_spectrum(net: Network, query, h: Acts, *, method: str = "auto", scale: str = "sample",
                     tol: float = 1e-6, maxiter: int | None = None, ncv: int | None = None,
                     seed: int = 0) -> Spectrum:
    """λ_min, λ_max and the condition number of the activity Hessian at ``h``.

    ``method``: ``"dense"`` (``jax.hessian`` + ``eigvalsh``; ``n²`` memory), ``"lanczos"``
    (matrix-free, ``eigsh(which="LA")`` and ``eigsh(which="SA")`` on :func:`hessian_operator`;
    ``tol`` is ARPACK's relative accuracy, ``maxiter`` its restart cap, ``ncv`` its Krylov basis
    size) or ``"auto"`` (dense up to ``DENSE_MAX`` free variables). λ_max converges in tens of
    products; λ_min of a deep network's Hessian sits in a cluster and may need thousands: when
    ARPACK stops at ``maxiter`` the result says ``converged=False`` and holds its best estimate
    (an upper bound on λ_min, from LOBPCG if ARPACK kept none), so ``cond`` is a lower bound."""
    if scale not in ("sample", "batch"):
        raise ValueError(f"scale must be 'sample' or 'batch', got {scale!r}")
    if method not in ("auto", "dense", "lanczos"):
        raise ValueError(f"method must be auto, dense or lanczos, got {method!r}")
    q = as_query(net, query)
    n = int(jax.eval_shape(lambda: _free_size(net, q, h)).shape[0])
    if n == 0:
        raise ValueError(f"query {q.name!r} has no inference variables: no activity Hessian")
    if method == "dense" or (method == "auto" and n <= DENSE_MAX) or n <= 2:
        s = float(_batch_size(h)) if scale == "sample" else 1.0
        lam = np.linalg.eigvalsh(np.asarray(dense_hessian(net, q, h), dtype=np.float64)) * s
        lo, hi = float(lam[0]), float(lam[-1])
        return Spectrum(lo, hi, _cond(lo, hi), n, "dense", scale)
    from scipy.sparse.linalg import ArpackNoConvergence, eigsh, lobpcg

    op, count = hessian_operator(net, q, h, scale=scale)
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(n)
    ncv = ncv or min(n - 1, 64)
    maxiter = maxiter or 300
    converged = True
    vals = []
    for which in ("LA", "SA"):
        try:
            lam = eigsh(op, k=1, which=which, tol=tol, maxiter=maxiter, ncv=ncv, v0=v0,
                        return_eigenvectors=False)
            vals.append(float(lam[0]))
        except ArpackNoConvergence as e:
            converged = False
            vals.append(float(e.eigenvalues[0]) if len(e.eigenvalues) else math.nan)
    hi, lo = vals
    if not math.isfinite(lo):
        # ARPACK kept no Ritz value: LOBPCG's current estimate, an upper bound on λ_min
        # (so cond is then a lower bound); ``converged`` stays False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lam = lobpcg(op, rng.standard_normal((n, 4)), largest=False, tol=tol,
                         maxiter=max(20, maxiter // 4))[0]
        lo = float(np.min(lam))
    return Spectrum(lo, hi, _cond(lo, hi), n, "lanczos", scale, converged, count[0])


# ------------------------------------------------------------------------------ linear graphs
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
        return {"equilibrated_energy": _finite_or_none(self.energy), "singular": self.singular,
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
    h = _acts(net, q, batch)
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
    h = _acts(net, q, batch)
    B = _batch_size(h)
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


# ------------------------------------------------------------------------------ alignment
@dataclass(frozen=True)
class Alignment:
    """``cosine`` between the PC weight gradient ``∂F/∂θ`` (at the relaxed activities) and the BP
    gradient ``∂L/∂θ`` over all parameters; ``per_term`` per edge term; the two norms."""

    cosine: float
    per_term: dict
    pc_norm: float
    bp_norm: float

    def as_dict(self) -> dict:
        return {"cosine": _finite_or_none(self.cosine),
                "per_term": {k: _finite_or_none(v) for k, v in self.per_term.items()},
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
    h = _acts(net, q, batch)
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
    h = _acts(net, q, batch)
    g_pc, g_bp = _grads(net, q, q_out, order, h, tuple(h_relaxed))
    per = {}
    for name in net.term_names():
        a, b = _flat(g_pc.term_params(name)), _flat(g_bp.term_params(name))
        if a.size:
            per[name] = _cos(a, b)
    a, b = _flat(g_pc.params), _flat(g_bp.params)
    return Alignment(_cos(a, b), per, float(np.linalg.norm(a)), float(np.linalg.norm(b)))


# ------------------------------------------------------------------------------ one query
@dataclass(frozen=True)
class QueryAnalysis:
    """What :func:`analyse_query` measured on one query and batch (``as_dict`` for JSON)."""

    query: str
    batch_size: int
    init: str
    inference: str
    steps: int
    energy_init: dict
    energy_end: dict
    hessian: Spectrum | None = None
    hessian_at: str = "end"
    alignment: Alignment | None = None
    linear: bool = False
    equilibrium: Equilibrium | None = None
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def total_init(self) -> float:
        return float(sum(self.energy_init.values()))

    @property
    def total_end(self) -> float:
        return float(sum(self.energy_end.values()))

    def as_dict(self) -> dict:
        return {
            "query": self.query, "batch_size": self.batch_size, "init": self.init,
            "inference": self.inference, "steps": self.steps,
            "energy_init": self.energy_init, "energy_end": self.energy_end,
            "total_init": self.total_init, "total_end": self.total_end,
            "hessian_at": self.hessian_at,
            "hessian": None if self.hessian is None else self.hessian.as_dict(),
            "alignment": None if self.alignment is None else self.alignment.as_dict(),
            "linear": self.linear,
            "equilibrium": None if self.equilibrium is None else self.equilibrium.as_dict(),
            "notes": list(self.notes), "warnings": list(self.warnings),
        }


def _initial(net: Network, q: QueryPlan, h: Acts, init: Initialisation | None, key):
    from ._init import initialise

    name = (init.method if init is not None else None) or _setting(net, "init")
    try:
        return initialise(net, q, h, init, key=key), str(name), None
    except (ValueError, TypeError) as e:  # a stateful initialiser (mem, avg, null) needs training
        zero = Initialisation("zero", nodes={n: "zero" for n in q.free_names})
        h0 = initialise(net, q, h, zero, key=key)
        return h0, "zero", (f"init {name!r} could not run outside training "
                            f"({str(e).splitlines()[0]}); analysed from zero")


def _setting(net: Network, name: str):
    return net.plan.settings.get(name)


def _describe(inf: Inference) -> str:
    if isinstance(inf, GradientDescent):
        return "gd"
    return type(inf.solver).__name__.lower() + (" (adaptive)" if inf.adaptive else
                                                f" (dt {inf.dt:g})")


def analyse_query(net: Network, query, batch: Mapping[str, Any], *,
                  inference: Inference | None = None, steps: int | None = None,
                  init: Initialisation | None = None, key=None, spectrum: bool = True,
                  hessian_at: str = "end", method: str = "auto", tol: float = 1e-6,
                  maxiter: int | None = None, alignment: bool = True) -> QueryAnalysis:
    """Analyse ``query`` on ``batch`` (``{node: array}`` for the clamped nodes).

    Per node energy (batch mean) at initialisation (``init``, an ``Initialisation``; default the
    model's policy) and after inference (``inference``, a ``GradientDescent`` or
    ``GradientFlow``; default the model's settings; ``steps`` overrides its step count); the
    activity Hessian's extremes and condition number at ``hessian_at`` (``"init"`` or ``"end"``);
    the cosine of the PC weight gradient with the BP gradient (queries with a forward pass and a
    clamped target); for linear graphs the equilibrium (``F*``, singularity)."""
    if hessian_at not in ("init", "end"):
        raise ValueError(f"hessian_at must be 'init' or 'end', got {hessian_at!r}")
    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    inf = resolve_config(net.plan.settings).inference if inference is None else inference
    if steps is not None:
        inf = with_steps(inf, steps)
    key = jax.random.PRNGKey(0) if key is None else key
    notes: list[str] = []
    warns: list[str] = []
    h = _acts(net, q, batch)
    h0, init_used, note = _initial(net, q, h, init, key)
    if note:
        notes.append(note)
    hT = infer(net, q, h0, inf).h
    e0 = {k: float(v) for k, v in node_energies(net, h0, q).items()}
    e1 = {k: float(v) for k, v in node_energies(net, hT, q).items()}
    linear = is_linear(net)
    spec = None
    if spectrum and q.free_groups:
        spec = hessian_spectrum(net, q, h0 if hessian_at == "init" else hT, method=method,
                                tol=tol, maxiter=maxiter)
        if not spec.converged:
            warns.append(f"Lanczos did not converge in {spec.matvecs} products; the extremes are "
                         "estimates")
    elif not q.free_groups:
        notes.append("no inference variables: no activity Hessian")
    align = None
    if alignment:
        try:
            align = update_alignment(net, q, batch if isinstance(batch, Mapping) else h, hT)
        except ValueError as e:  # ForwardError is a ValueError
            notes.append(f"no BP comparison: {str(e).splitlines()[0]}")
    eq = None
    if linear and q.free_groups:
        eq = equilibrium(net, q, h, method=method, warn=False)
        if eq.singular:
            warns.append(eq.message)
    return QueryAnalysis(q.name, _batch_size(h), init_used, _describe(inf), int(inf.steps), e0,
                         e1, spec, hessian_at, align, linear, eq, tuple(notes), tuple(warns))
