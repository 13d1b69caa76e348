"""Inference: relax the free activities of a query to reduce F (DESIGN §3).

:func:`infer` takes the inference configuration whole (``_config``) and runs one of two
relaxations, both driven by ``jax.grad`` of F (never hand-derived rules):

* :class:`~pcgraph.GradientDescent` — T steps of an optax optimiser inside ``jax.lax.scan``;
  clamped values are re-imposed every step. ``tol > 0`` stops early once ``‖∇_h F‖ < tol`` (a
  ``lax.while_loop`` with a step cap, or frozen updates inside the scan when activities are
  recorded), so shapes stay static.
* :class:`~pcgraph.GradientFlow` — the gradient flow ``dh/dt = −∇_h F`` with a diffrax solver
  and step-size controller, and a steady-state ``diffrax.Event`` on the **vector field**:
  ``‖∇_h F‖ < ss_atol + ss_rtol·‖h‖``.

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

from ._config import GradientDescent, GradientFlow, Inference, resolve_config
from ._custom_types import Batch
from ._energy import energy, set_leaves
from ._network import Network
from ._plan import Acts
from ._query import QueryPlan, compile_query


class InferResult(NamedTuple):
    """What a relaxation returns (a pytree of device arrays)."""

    h: Acts  # relaxed activities (free leaves at their predictions)
    energies: Any  # GD: F before each step, [T] (NaN for steps not taken); ODE: [n] if recorded
    trajectory: Any  # activities of the free groups per step (tuple over query.free_groups) or None
    steps: Any  # number of steps taken (int array)
    grad_norm: Any  # ‖∇_h F‖ at the last evaluated point (GD without tol: at the returned h)
    converged: Any  # bool: early stop / steady-state event fired


# ------------------------------------------------------------------------------ helpers
def merge_free(h: Acts, query: QueryPlan, free) -> Acts:
    """``h`` with the free groups of ``query`` replaced by ``free``."""
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


def _observed_masks(query: QueryPlan, masks: tuple, observed) -> tuple:
    """``masks`` with the observed elements of partly clamped inner nodes held (0)."""
    if observed is None or not query.partial_inner:
        return masks
    out = []
    for g, m in zip(query.free_groups, masks):
        pi = query.partial_inner[g]
        if any(pi):
            obs = observed[g]
            sel = np.asarray(pi, dtype=np.float64).reshape((len(pi),) + (1,) * (obs.ndim - 1))
            held = 1 - jnp.asarray(sel, obs.dtype) * obs
            m = held if m is None else m * held
        out.append(m)
    return tuple(out)


def energy_grad_fn(net: Network, query: QueryPlan, h: Acts, activity_scale: str = "sample",
                   observed=None):
    """``f(free) -> (F, ∇_free F)`` with masks and the batch convention applied; ``observed``
    (see :func:`observed_masks`) holds the observed elements of partly clamped nodes."""
    B = h[0].shape[1]
    free0 = tuple(h[g] for g in query.free_groups)
    masks = _observed_masks(query, _free_masks(query, free0), observed)
    scale = float(B) if activity_scale == "sample" else 1.0

    def F(free):
        return energy(net, merge_free(h, query, free), query, observed)

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


def reimpose(free, free0, masks):
    """Clamped members of partly clamped groups back at their values in ``free0``."""
    return tuple(a if m is None else m * a + (1 - m) * a0 for a, a0, m in zip(free, free0, masks))


# ------------------------------------------------------------------------------ dispatch
def infer(net: Network, query: QueryPlan, h0: Acts, inference: Inference | None = None, *,
          record: bool = False, observed=None, energies: bool = True) -> InferResult:
    """Relax the free activities of ``query`` from ``h0`` by ``inference`` (a
    :class:`GradientDescent`, the default, or a :class:`GradientFlow`).

    ``record``: keep every step's free activities (``trajectory``) and, for a flow, every step's
    energy (``energies``, padded with ``inf`` after the last step). ``observed``: the element masks
    of partly clamped nodes (:func:`observed_masks`). ``energies=False``: GD does not evaluate F
    at each step (``energies`` is None; only ``∇F`` is computed, which saves a reduction pass
    over every node per step) — for callers that read only ``h``."""
    query.check(net)
    inference = GradientDescent() if inference is None else inference
    if isinstance(inference, GradientDescent):
        return _descend(net, query, h0, inference, record, observed, energies)
    if isinstance(inference, GradientFlow):
        return _flow(net, query, h0, inference, record, observed)
    raise TypeError(f"inference must be a GradientDescent or a GradientFlow, not "
                    f"{type(inference).__name__}")


def _frozen_where(done, old, new):
    return jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), old, new)


# ------------------------------------------------------------------------------ discrete
#: the inference scan's unroll factor by T: short loops fully unrolled (XLA then schedules and
#: fuses across steps, no loop-carried copies), longer ones by this factor (bounded compile time)
FULL_UNROLL_MAX, PARTIAL_UNROLL = 8, 2


def scan_unroll(steps: int) -> int:
    """``lax.scan``'s ``unroll`` for ``steps`` inference steps (benchmarks/step_speed.py)."""
    return steps if steps <= FULL_UNROLL_MAX else PARTIAL_UNROLL


def _descend(net: Network, query: QueryPlan, h0: Acts, cfg: GradientDescent,
             record: bool, observed=None, keep_energies: bool = True) -> InferResult:
    """``cfg.steps`` optimiser steps on the free activities (one scan, or a while loop when
    ``cfg.tol`` may stop it early and nothing is recorded)."""
    steps, tol = int(cfg.steps), float(cfg.tol)
    fg = query.free_groups
    if not fg or steps == 0:
        z = jnp.zeros((), h0[0].dtype)
        return InferResult(set_leaves(net, h0, query, observed), jnp.zeros((0,), h0[0].dtype), None,
                           jnp.asarray(0), z, jnp.asarray(True))
    opt = cfg.optimizer
    grad_fn, masks = energy_grad_fn(net, query, h0, cfg.activity_scale, observed)
    free0 = tuple(h0[g] for g in fg)
    ost0 = opt.init(free0)
    dtype = h0[0].dtype

    def update(free, ost, g):
        upd, ost = opt.update(g, ost, free)
        free = optax.apply_updates(free, upd)
        return reimpose(free, free0, masks), ost

    if tol > 0 and not record:
        def cond(c):
            i, _, _, done, _, _ = c
            return (i < steps) & (~done)

        def body(c):
            i, free, ost, _, es, _ = c
            val, g = grad_fn(free)
            gn = _norm(g)
            done = gn < tol
            new_free, new_ost = update(free, ost, g)
            free, ost = _frozen_where(done, free, new_free), _frozen_where(done, ost, new_ost)
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
            gn = _norm(g) if (tol > 0 or record) else jnp.zeros((), dtype)
            if tol > 0:
                done = done | (gn < tol)
                new_free, new_ost = update(free, ost, g)
                free, ost = _frozen_where(done, free, new_free), _frozen_where(done, ost, new_ost)
                n = n + jnp.where(done, 0, 1)
            else:
                free, ost = update(free, ost, g)
                n = n + 1
            # an unused F is dead code: XLA drops its reductions from the loop body
            keep = keep_energies or record
            return (free, ost, done, n), (val if keep else None, gn, free if record else None)

        c = (free0, ost0, jnp.asarray(False), jnp.asarray(0))
        (free, _, done, n), (energies, gns, traj) = jax.lax.scan(body, c, None, length=steps,
                                                                 unroll=scan_unroll(steps))
        gn = gns[-1] if (tol > 0 or record) else _norm(grad_fn(free)[1])
    h = set_leaves(net, merge_free(h0, query, free), query, observed)
    return InferResult(h, energies, traj, n, gn, done)


# ------------------------------------------------------------------------------ ODE
def _flow(net: Network, query: QueryPlan, h0: Acts, cfg: GradientFlow,
          record: bool, observed=None) -> InferResult:
    """Integrate ``dh/dt = −∇_h F`` from 0 to ``cfg.t1`` (default ``steps·dt``) with diffrax."""
    fg = query.free_groups
    dtype = h0[0].dtype
    if not fg:
        z = jnp.zeros((), dtype)
        return InferResult(set_leaves(net, h0, query, observed), None, None, jnp.asarray(0), z,
                           jnp.asarray(True))
    grad_fn, masks = energy_grad_fn(net, query, h0, cfg.activity_scale, observed)
    free0 = tuple(h0[g] for g in fg)
    dt = float(cfg.dt)
    t1 = float(cfg.steps * dt if cfg.t1 is None else cfg.t1)
    max_steps = cfg.max_steps
    if max_steps is None:
        max_steps = 4096 if cfg.adaptive else int(math.ceil(t1 / dt - 1e-9)) + 1

    def vf(t, y, args):
        return jax.tree_util.tree_map(jnp.negative, grad_fn(y)[1])

    event = None
    if cfg.steady_state:
        def cond_fn(t, y, args, **kwargs):
            return _norm(vf(t, y, args)) < cfg.ss_atol + cfg.ss_rtol * _norm(y)

        event = diffrax.Event(cond_fn)
    saveat = diffrax.SaveAt(steps=True) if record else diffrax.SaveAt(t1=True)
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(vf), cfg.solver, t0=0.0, t1=t1, dt0=dt, y0=free0,
        stepsize_controller=cfg.stepsize_controller, event=event, saveat=saveat,
        max_steps=max_steps, throw=False,
    )
    n = sol.stats["num_steps"]
    if record:
        traj = sol.ys
        last = jax.tree_util.tree_map(lambda a: a[jnp.maximum(n - 1, 0)], traj)

        def e_of(free):
            return energy(net, merge_free(h0, query, free), query, observed)

        energies = jax.lax.map(e_of, traj)
        energies = jnp.where(jnp.arange(energies.shape[0]) < n, energies, jnp.inf)
    else:
        traj, energies = None, None
        last = jax.tree_util.tree_map(lambda a: a[-1], sol.ys)
    last = reimpose(last, free0, masks)
    gn = _norm(grad_fn(last)[1])
    converged = sol.event_mask if event is not None else jnp.asarray(False)
    h = set_leaves(net, merge_free(h0, query, last), query, observed)
    return InferResult(h, energies, traj, n, gn, jnp.asarray(converged))


# ------------------------------------------------------------------------------ data
def clamp_data(net: Network, query: QueryPlan, data: Batch, dtype=None) -> Acts:
    """``Acts`` with the clamped nodes of ``query`` set from ``data`` (zeros elsewhere).

    Integer label vectors ``[B]`` for a vector node are one-hot encoded. Partly clamped nodes
    (``clamp img where mask``) are set from ``data`` too (their missing elements are zeroed);
    :func:`observed_masks` gives their masks."""
    dtype = dtype or net.dtype
    partial = {n: m for n, m in query.partial}
    missing = [n for n in (*query.clamp, *partial) if n not in data]
    missing += [m for m in partial.values() if m not in data]
    if missing:
        raise KeyError(f"query {query.name!r} clamps {', '.join(missing)} but the batch lacks them")
    vals = {}
    for n in (*query.clamp, *partial):
        v = jnp.asarray(data[n])
        shape = net.node_shape(n)
        if v.ndim == 1 and len(shape) == 1 and jnp.issubdtype(v.dtype, jnp.integer):
            v = jax.nn.one_hot(v, shape[0], dtype=dtype)
        vals[n] = v.astype(dtype)
        if n in partial:
            vals[n] = vals[n] * _element_mask(net, n, data[partial[n]], vals[n].shape, dtype)
    B = next(iter(vals.values())).shape[0] if vals else None
    if B is None:
        raise ValueError(f"query {query.name!r} clamps nothing: give the batch size")
    return net.pack(vals, batch=B, dtype=dtype)


def _element_mask(net: Network, node: str, mask, shape, dtype):
    """A 0/1 mask of ``shape`` (anything non-zero is observed)."""
    m = jnp.asarray(mask)
    if m.shape != tuple(shape):
        raise ValueError(f"the mask of node {node!r} has shape {tuple(m.shape)}; it must have the "
                         f"node's data shape {tuple(shape)} (1 = observed, 0 = missing)")
    return (m != 0).astype(dtype)


def observed_masks(net: Network, query: QueryPlan, data: Mapping[str, Any], dtype=None):
    """Per node group, ``None`` or a 0/1 ``[G, B, *shape]`` array: for each partly clamped node
    (``clamp NODE where MASK``) the mask ``data[MASK]`` (1 = observed), ones for the group's other
    nodes. ``None`` for a query without partial observations."""
    if not query.partial:
        return None
    dtype = dtype or net.dtype
    part = dict(query.partial)
    out = []
    for g in net.plan.groups:
        if not any(n in part for n in g.names):
            out.append(None)
            continue
        B = next(len(data[n]) for n in g.names if n in part)
        out.append(jnp.stack([_element_mask(net, n, data[part[n]], (B, *g.shape), dtype)
                              if n in part else jnp.ones((B, *g.shape), dtype)
                              for n in g.names]))
    return tuple(out)


def impose_observed(query: QueryPlan, h0: Acts, h: Acts, observed) -> Acts:
    """``h0`` with the observed elements of partly clamped nodes taken from ``h`` (the data)."""
    if observed is None:
        return h0
    part = {n for n, _ in query.partial}
    out = list(h0)
    for gi, names in enumerate(query.layout):
        if observed[gi] is None:
            continue
        sel = np.asarray([n in part for n in names], dtype=np.float64)
        sel = jnp.asarray(sel.reshape((len(names),) + (1,) * (h0[gi].ndim - 1)), h0[gi].dtype)
        w = sel * observed[gi]
        out[gi] = h0[gi] * (1 - w) + h[gi] * w
    return tuple(out)


def relax(
    net: Network,
    query,
    data: Batch,
    inference: Inference | None = None,
    *,
    init=None,
    key=None,
) -> InferResult:
    """Convenience (not jitted): clamp ``data``, initialise (``init``: an ``Initialisation``;
    default the model's policy), infer (``inference``: default the model's settings). A query
    with partial observations (``clamp img where mask``) takes each mask from ``data`` beside the
    node's values: ``relax(net, "inpaint", {"img": x, "mask": m})``."""
    from ._init import initialise

    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    if inference is None:
        inference = resolve_config(net.plan.settings).inference
    h = clamp_data(net, q, data)
    observed = observed_masks(net, q, data, h[0].dtype)
    h0 = impose_observed(q, initialise(net, q, h, init, key=key), h, observed)
    return infer(net, q, h0, inference, observed=observed)
