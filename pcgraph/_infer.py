"""Inference: relax the free activities of a query to reduce F (DESIGN §3).

Two solvers, both driven by ``jax.grad`` of F (never hand-derived rules):

* :func:`infer` — T steps of any optax optimiser (plain SGD, ``lr = activity_lr``, by default)
  inside ``jax.lax.scan``; clamped values are re-imposed every step. ``tol > 0`` stops early once
  ``‖∇_h F‖ < tol`` (a ``lax.while_loop`` with a step cap, or frozen updates inside the scan when
  activities are recorded), so shapes stay static.
* :func:`infer_ode` — the gradient flow ``dh/dt = −∇_h F`` with diffrax (Euler, Heun, Tsit5;
  constant steps or a ``PIDController``) and a steady-state ``diffrax.Event`` on the **vector
  field**: ``‖∇_h F‖ < ss_atol + ss_rtol·‖h‖``.

**Gradient convention** (``activity_scale``). F is a mean over the batch, so ``∇_h F`` of one
sample carries a factor ``1/B``. With ``"sample"`` (default) the activity gradient is that of the
per-sample energy (``B·∇_h F``), so inference of a sample does not depend on the batch size (PCX's
convention; seed 004's activity learning rates). ``"batch"`` uses ``∇_h F`` itself (JPC's
convention: multiply its activity learning rates by B to compare). Weight gradients are always
``∂F/∂θ`` of the batch mean.

Only the groups that hold inference variables are differentiated; free leaves are set to their
predictions at the end (``_energy.set_leaves``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ._energy import energy, set_leaves
from ._network import Acts, Network, QueryPlan

SOLVERS = ("gd", "euler", "heun", "tsit5")
ACTIVITY_SCALES = ("sample", "batch")


class InferResult(NamedTuple):
    h: Acts  # relaxed activities (free leaves at their predictions)
    energies: Any  # GD: F before each step, [T] (NaN for steps not taken); ODE: [n] if recorded
    trajectory: Any  # activities of the free groups per step (tuple over query.free_groups) or None
    steps: Any  # number of steps taken (int array)
    grad_norm: Any  # ‖∇_h F‖ at the last evaluated point (GD without tol: at the returned h)
    converged: Any  # bool: early stop / steady-state event fired


# ------------------------------------------------------------------------------ helpers
def _merge(h: Acts, query: QueryPlan, free) -> Acts:
    out = list(h)
    for g, a in zip(query.free_groups, free):
        out[g] = a
    return tuple(out)


def _free_masks(query: QueryPlan, free) -> tuple:
    """Per free group: None (all free) or a 0/1 ``[G, 1, ...]`` constant."""
    out = []
    for g, a in zip(query.free_groups, free):
        f = query.free[g]
        if all(f):
            out.append(None)
        else:
            m = np.asarray(f, dtype=np.float64).reshape((len(f),) + (1,) * (a.ndim - 1))
            out.append(jnp.asarray(m, a.dtype))
    return tuple(out)


def _norm(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(x * x) for x in leaves))


def energy_grad_fn(net: Network, query: QueryPlan, h: Acts, activity_scale: str = "sample"):
    """``f(free) -> (F, ∇_free F)`` with masks and the batch convention applied."""
    if activity_scale not in ACTIVITY_SCALES:
        raise ValueError(f"activity_scale must be one of {ACTIVITY_SCALES}, got {activity_scale!r}")
    B = h[0].shape[1]
    free0 = tuple(h[g] for g in query.free_groups)
    masks = _free_masks(query, free0)
    scale = float(B) if activity_scale == "sample" else 1.0

    def F(free):
        return energy(net, _merge(h, query, free), query)

    vg = jax.value_and_grad(F)

    def fn(free):
        val, g = vg(free)
        return val, condition_grads(g, masks, scale)

    return fn, masks


def condition_grads(grads, masks, scale: float):
    """Activity gradients with clamped members of partly clamped groups zeroed (``masks``) and
    the batch convention applied (``scale``: B for per-sample steps, 1 for the batch mean)."""
    out = []
    for g, m in zip(grads, masks):
        if m is not None:
            g = g * m
        if scale != 1.0:
            g = g * scale
        out.append(g)
    return tuple(out)


def _reimpose(free, free0, masks):
    return tuple(a if m is None else m * a + (1 - m) * a0 for a, a0, m in zip(free, free0, masks))


def activity_optimizer(name: str | optax.GradientTransformation | None, lr: float):
    if isinstance(name, optax.GradientTransformation):
        return name
    name = name or "sgd"
    table = {
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=0.9),
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr),
        "rmsprop": lambda: optax.rmsprop(lr),
    }
    if name not in table:
        raise ValueError(f"unknown activity optimizer {name!r}; known: {', '.join(table)}")
    return table[name]()


# ------------------------------------------------------------------------------ discrete
def infer(
    net: Network,
    query: QueryPlan,
    h0: Acts,
    *,
    steps: int,
    lr: float = 0.1,
    optimizer: optax.GradientTransformation | str | None = None,
    tol: float = 0.0,
    record_activities: bool = False,
    activity_scale: str = "sample",
) -> InferResult:
    """``steps`` optimiser steps on the free activities of ``query`` from ``h0`` (one scan)."""
    query.check(net)
    steps = int(steps)
    fg = query.free_groups
    if not fg or steps == 0:
        z = jnp.zeros((), h0[0].dtype)
        return InferResult(set_leaves(net, h0, query), jnp.zeros((0,), h0[0].dtype), None,
                           jnp.asarray(0), z, jnp.asarray(True))
    opt = activity_optimizer(optimizer, lr)
    grad_fn, masks = energy_grad_fn(net, query, h0, activity_scale)
    free0 = tuple(h0[g] for g in fg)
    ost0 = opt.init(free0)
    dtype = h0[0].dtype

    def update(free, ost, g):
        upd, ost = opt.update(g, ost, free)
        free = optax.apply_updates(free, upd)
        return _reimpose(free, free0, masks), ost

    if tol > 0 and not record_activities:
        def cond(c):
            i, _, _, done, _, _ = c
            return (i < steps) & (~done)

        def body(c):
            i, free, ost, _, es, _ = c
            val, g = grad_fn(free)
            gn = _norm(g)
            done = gn < tol
            new_free, new_ost = update(free, ost, g)
            free = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), free, new_free)
            ost = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), ost, new_ost)
            return i + jnp.where(done, 0, 1), free, ost, done, es.at[i].set(val), gn

        es0 = jnp.full((steps,), jnp.nan, dtype)
        c = (jnp.asarray(0), free0, ost0, jnp.asarray(False), es0, jnp.zeros((), dtype))
        n, free, _, done, energies, gn = jax.lax.while_loop(cond, body, c)
        traj = None
    else:
        def body(c, _):
            free, ost, done, n = c
            val, g = grad_fn(free)
            # the norm costs a pass over every activity: only when it is used
            gn = _norm(g) if (tol > 0 or record_activities) else jnp.zeros((), dtype)
            if tol > 0:
                done = done | (gn < tol)
                new_free, new_ost = update(free, ost, g)
                free = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), free, new_free)
                ost = jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), ost, new_ost)
                n = n + jnp.where(done, 0, 1)
            else:
                free, ost = update(free, ost, g)
                n = n + 1
            return (free, ost, done, n), (val, gn, free if record_activities else None)

        c = (free0, ost0, jnp.asarray(False), jnp.asarray(0))
        (free, _, done, n), (energies, gns, traj) = jax.lax.scan(body, c, None, length=steps)
        gn = gns[-1] if (tol > 0 or record_activities) else _norm(grad_fn(free)[1])
    h = set_leaves(net, _merge(h0, query, free), query)
    return InferResult(h, energies, traj, n, gn, done)


# ------------------------------------------------------------------------------ ODE
_DIFFRAX = {"euler": diffrax.Euler, "heun": diffrax.Heun, "tsit5": diffrax.Tsit5}


def infer_ode(
    net: Network,
    query: QueryPlan,
    h0: Acts,
    *,
    solver: str = "heun",
    dt: float = 0.1,
    steps: int = 20,
    t1: float | None = None,
    max_steps: int | None = None,
    adaptive: bool = False,
    rtol: float = 1e-3,
    atol: float = 1e-6,
    steady_state: bool = True,
    ss_rtol: float = 1e-3,
    ss_atol: float = 1e-5,
    record: bool = False,
    activity_scale: str = "sample",
) -> InferResult:
    """Integrate ``dh/dt = −∇_h F`` from 0 to ``t1`` (default ``steps·dt``).

    Constant steps of size ``dt`` (Euler with ``dt = lr`` is exactly plain GD), or adaptive steps
    (``adaptive=True``: ``PIDController(rtol, atol)``, not with Euler). With ``steady_state`` the
    solve stops as soon as ``‖∇_h F‖ < ss_atol + ss_rtol·‖h‖``; ``converged`` says whether it
    fired. With adaptive steps the steady-state tolerances must sit above the controller's noise
    floor (about ``rtol·‖h‖`` times the largest curvature), or the event cannot fire. ``record`` saves every step's state and energy (``trajectory``/``energies``, padded with
    ``inf`` after the last step)."""
    query.check(net)
    if solver not in _DIFFRAX:
        raise ValueError(f"unknown ODE solver {solver!r}; known: {', '.join(_DIFFRAX)}")
    if adaptive and solver == "euler":
        raise ValueError("Euler has no error estimate: use heun or tsit5 with adaptive steps")
    fg = query.free_groups
    dtype = h0[0].dtype
    if not fg:
        z = jnp.zeros((), dtype)
        return InferResult(set_leaves(net, h0, query), None, None, jnp.asarray(0), z,
                           jnp.asarray(True))
    grad_fn, masks = energy_grad_fn(net, query, h0, activity_scale)
    free0 = tuple(h0[g] for g in fg)
    t1 = float(steps * dt if t1 is None else t1)
    if max_steps is None:
        max_steps = 4096 if adaptive else int(math.ceil(t1 / dt - 1e-9)) + 1

    def vf(t, y, args):
        return jax.tree_util.tree_map(jnp.negative, grad_fn(y)[1])

    event = None
    if steady_state:
        def cond_fn(t, y, args, **kwargs):
            return _norm(vf(t, y, args)) < ss_atol + ss_rtol * _norm(y)

        event = diffrax.Event(cond_fn)
    controller = (diffrax.PIDController(rtol=rtol, atol=atol) if adaptive
                  else diffrax.ConstantStepSize())
    saveat = diffrax.SaveAt(steps=True) if record else diffrax.SaveAt(t1=True)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), _DIFFRAX[solver](), t0=0.0, t1=t1, dt0=dt, y0=free0,
        stepsize_controller=controller, event=event, saveat=saveat, max_steps=max_steps,
        throw=False,
    )
    n = sol.stats["num_steps"]
    if record:
        traj = sol.ys
        last = jax.tree_util.tree_map(lambda a: a[jnp.maximum(n - 1, 0)], traj)

        def e_of(free):
            return energy(net, _merge(h0, query, free), query)

        energies = jax.lax.map(e_of, traj)
        energies = jnp.where(jnp.arange(energies.shape[0]) < n, energies, jnp.inf)
    else:
        traj, energies = None, None
        last = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    last = _reimpose(last, free0, masks)
    gn = _norm(grad_fn(last)[1])
    converged = sol.event_mask if event is not None else jnp.asarray(False)
    h = set_leaves(net, _merge(h0, query, last), query)
    return InferResult(h, energies, traj, n, gn, jnp.asarray(converged))


# ------------------------------------------------------------------------------ data
def clamp_data(net: Network, query: QueryPlan, data: Mapping[str, Any], dtype=None) -> Acts:
    """``Acts`` with the clamped nodes of ``query`` set from ``data`` (zeros elsewhere).

    Integer label vectors ``[B]`` for a vector node are one-hot encoded."""
    dtype = dtype or net.dtype
    missing = [n for n in query.clamp if n not in data]
    if missing:
        raise KeyError(f"query {query.name!r} clamps {', '.join(missing)} but the batch lacks them")
    vals = {}
    for n in query.clamp:
        v = jnp.asarray(data[n])
        shape = net.node_shape(n)
        if v.ndim == 1 and len(shape) == 1 and jnp.issubdtype(v.dtype, jnp.integer):
            v = jax.nn.one_hot(v, shape[0], dtype=dtype)
        vals[n] = v.astype(dtype)
    B = next(iter(vals.values())).shape[0] if vals else None
    if B is None:
        raise ValueError(f"query {query.name!r} clamps nothing: give the batch size")
    return net.pack(vals, batch=B, dtype=dtype)


def run_inference(
    net: Network,
    query: QueryPlan,
    h0: Acts,
    *,
    solver: str = "gd",
    steps: int = 20,
    lr: float = 0.1,
    optimizer=None,
    tol: float = 0.0,
    activity_scale: str = "sample",
    ode_options: Mapping[str, Any] | None = None,
) -> InferResult:
    """Dispatch to :func:`infer` (``solver = gd``) or :func:`infer_ode` (euler, heun, tsit5)."""
    if solver == "gd":
        return infer(net, query, h0, steps=steps, lr=lr, optimizer=optimizer, tol=tol,
                     activity_scale=activity_scale)
    opts = dict(ode_options or {})
    opts.setdefault("dt", lr)
    return infer_ode(net, query, h0, solver=solver, steps=steps, activity_scale=activity_scale,
                     **opts)


def relax(
    net: Network,
    query,
    data: Mapping[str, Any],
    *,
    init: str | None = None,
    key=None,
    steps: int | None = None,
    lr: float | None = None,
    solver: str | None = None,
    **kwargs,
) -> InferResult:
    """Convenience (not jitted): clamp ``data``, initialise, infer. Defaults from the settings."""
    from ._init import initialise
    from ._network import compile_query

    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    s = net.plan.settings
    h = clamp_data(net, q, data)
    h0 = initialise(net, q, h, default=init, key=key)
    return run_inference(
        net, q, h0,
        solver=solver or s.get("solver"),
        steps=int(s.get("steps") if steps is None else steps),
        lr=float(s.get("activity_lr") if lr is None else lr),
        optimizer=kwargs.pop("optimizer", s.get("activity_optimizer")),
        **kwargs,
    )
