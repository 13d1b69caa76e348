"""Learning: the PC training step, iPC, the BP baseline, the evaluation step (DESIGN §3).

Each ``make_*`` function resolves everything static once (query plan, init plan, forward order,
optimisers) and returns ONE jitted function; calling it again with new batches of the same shapes
never retraces (``TrainStep.traces`` counts traces).

* ``pc``: initialise → infer (scan / ODE) → ``stop_gradient`` → ``∂F/∂θ`` at the relaxed
  activities (``eqx.filter_value_and_grad``) → optax update. Nothing differentiates through
  inference, so memory does not grow with T.
* ``ipc`` (incremental PC): θ is updated at every inference step inside the scan, from the same
  ``∇F`` evaluation as the activities.
* ``bp``: the forward pass of the same DAG from the clamped roots, loss = the energy of the clamped
  non-root nodes at the forward values (cross-entropy for categorical, ½‖ε‖²·π for gaussian),
  differentiated by ``jax.grad`` through the forward pass.

Metrics (scalars): ``energy_start`` (F at t=0), ``energy_end`` (F at the relaxed activities, before
the weight update), ``loss`` (the output loss at t=0: the energy of the clamped nodes with parents;
with forward initialisation it equals both ``energy_start`` and the BP loss), ``loss_end`` (the same
at the relaxed activities), ``steps`` (inference steps taken); ``node_energies`` (per node, at the
end) when asked.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import optax

from ._energy import energy, forward_acts, node_energies, topological_order
from ._infer import (
    _merge,
    _reimpose,
    activity_optimizer as make_activity_optimizer,
    clamp_data,
    energy_grad_fn,
    run_inference,
)
from ._init import initialise
from ._network import Network, QueryPlan, compile_query

METHODS = ("pc", "ipc", "bp")


def weight_optimizer_from_settings(settings) -> optax.GradientTransformation:
    """The model's ``weight_optimizer`` / ``weight_lr`` / ``weight_decay`` settings as optax."""
    name = settings.get("weight_optimizer")
    lr = float(settings.get("weight_lr"))
    wd = float(settings.get("weight_decay"))
    if name in ("adam", "adamw"):
        return optax.adamw(lr, weight_decay=wd) if (wd > 0 or name == "adamw") else optax.adam(lr)
    if name in ("sgd", "momentum"):
        opt = optax.sgd(lr, momentum=0.9 if name == "momentum" else None)
        return optax.chain(optax.add_decayed_weights(wd), opt) if wd > 0 else opt
    raise ValueError(f"unknown weight optimizer {name!r}; known: adam, adamw, sgd, momentum")


def _params(net: Network):
    return eqx.filter(net, eqx.is_inexact_array)


class TrainStep:
    """A jitted training step ``(net, opt_state, batch, key=None) -> (net, opt_state, metrics)``.

    ``init(net)`` makes the optimiser state; ``traces`` counts how often the step was traced."""

    def __init__(self, fn: Callable, optimizer: optax.GradientTransformation, query: QueryPlan,
                 method: str, jit: bool = True):
        self.optimizer = optimizer
        self.query = query
        self.method = method
        self.traces = 0

        def counted(*args):
            self.traces += 1
            return fn(*args)

        self._fn = eqx.filter_jit(counted) if jit else counted

    def init(self, net: Network):
        return self.optimizer.init(_params(net))

    def __call__(self, net: Network, opt_state, batch: Mapping[str, Any], key=None):
        return self._fn(net, opt_state, dict(batch), key)


def _resolve(net: Network, steps, activity_lr, activity_optimizer_, init, solver):
    s = net.plan.settings
    return (
        int(s.get("steps") if steps is None else steps),
        float(s.get("activity_lr") if activity_lr is None else activity_lr),
        s.get("activity_optimizer") if activity_optimizer_ is None else activity_optimizer_,
        init,  # None: the model setting (resolved by _init)
        s.get("solver") if solver is None else solver,
    )


def make_train_step(
    net: Network,
    query,
    *,
    method: str = "pc",
    weight_optimizer: optax.GradientTransformation | None = None,
    steps: int | None = None,
    activity_lr: float | None = None,
    activity_optimizer=None,
    init: str | None = None,
    init_overrides: Mapping[str, str] | None = None,
    init_options: Mapping[str, Any] | None = None,
    solver: str | None = None,
    ode_options: Mapping[str, Any] | None = None,
    tol: float = 0.0,
    activity_scale: str = "sample",
    record_node_energies: bool = False,
    jit: bool = True,
) -> TrainStep:
    """One jitted training step for ``query`` (``method`` = pc | ipc | bp). Unset options come
    from the model settings (``steps``, ``activity_lr``, ``activity_optimizer``, ``init``,
    ``solver``, ``weight_optimizer``/``weight_lr``/``weight_decay``)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    q.check(net)
    T, lr, aopt, init, solver = _resolve(net, steps, activity_lr, activity_optimizer, init, solver)
    wopt = weight_optimizer or weight_optimizer_from_settings(net.plan.settings)
    q_out = q.with_counts(q.clamped_targets)
    overrides = dict(init_overrides or {})
    init_options = dict(init_options or {})

    def init_acts(net_, batch, key):
        h = clamp_data(net_, q, batch)
        return initialise(net_, q, h, default=init, overrides=overrides, key=key,
                          options=init_options)

    if method == "bp":
        order = topological_order(net, q.clamp)

        def bp_step(net_, opt_state, batch, key):
            h = clamp_data(net_, q, batch)

            def loss(n):
                return energy(n, forward_acts(n, h, order), q_out)

            val, grads = eqx.filter_value_and_grad(loss)(net_)
            updates, opt_state = wopt.update(grads, opt_state, _params(net_))
            net_ = eqx.apply_updates(net_, updates)
            metrics = {"loss": val, "energy_start": val, "energy_end": val, "loss_end": val,
                       "steps": jnp.asarray(0)}
            return net_, opt_state, metrics

        return TrainStep(bp_step, wopt, q, method, jit)

    if method == "pc":
        def pc_step(net_, opt_state, batch, key):
            h0 = init_acts(net_, batch, key)
            res = run_inference(net_, q, h0, solver=solver, steps=T, lr=lr, optimizer=aopt,
                                tol=tol, activity_scale=activity_scale, ode_options=ode_options)
            hs = jax.lax.stop_gradient(res.h)
            F_end, grads = eqx.filter_value_and_grad(lambda n: energy(n, hs, q))(net_)
            if solver == "gd" and T > 0 and q.free_groups:
                F0 = res.energies[0]
            else:
                F0 = energy(net_, h0, q)
            metrics = {
                "energy_start": F0,
                "energy_end": F_end,
                "loss": energy(net_, h0, q_out),
                "loss_end": energy(net_, hs, q_out),
                "steps": res.steps,
            }
            if record_node_energies:
                metrics["node_energies"] = node_energies(net_, hs, q)
            updates, opt_state = wopt.update(grads, opt_state, _params(net_))
            net_ = eqx.apply_updates(net_, updates)
            return net_, opt_state, metrics

        return TrainStep(pc_step, wopt, q, method, jit)

    # ---- iPC
    if solver != "gd":
        raise ValueError("iPC runs discrete steps: use solver = gd")
    aopt_t = make_activity_optimizer(aopt, lr)

    def ipc_step(net_, opt_state, batch, key):
        h0 = init_acts(net_, batch, key)
        params, static = eqx.partition(net_, eqx.is_inexact_array)
        fg = q.free_groups
        free0 = tuple(h0[g] for g in fg)
        B = h0[0].shape[1]
        scale = float(B) if activity_scale == "sample" else 1.0
        _, masks = energy_grad_fn(net_, q, h0, activity_scale)

        def F(free, p):
            return energy(eqx.combine(p, static), _merge(h0, q, free), q)

        vg = jax.value_and_grad(F, argnums=(0, 1))

        def body(c, _):
            free, aost, p, wost = c
            val, (gh, gp) = vg(free, p)
            gh = tuple((g if m is None else g * m) * scale for g, m in zip(gh, masks))
            upd, aost = aopt_t.update(gh, aost, free)
            free = _reimpose(optax.apply_updates(free, upd), free0, masks)
            wupd, wost = wopt.update(gp, wost, p)
            p = eqx.apply_updates(p, wupd)
            return (free, aost, p, wost), val

        c = (free0, aopt_t.init(free0), params, opt_state)
        (free, _, params, opt_state), energies = jax.lax.scan(body, c, None, length=max(T, 1))
        new = eqx.combine(params, static)
        hs = _merge(h0, q, free)
        metrics = {
            "energy_start": energies[0],
            "energy_end": energy(new, hs, q),
            "loss": energy(net_, h0, q_out),
            "loss_end": energy(new, hs, q_out),
            "steps": jnp.asarray(max(T, 1)),
        }
        if record_node_energies:
            metrics["node_energies"] = node_energies(new, hs, q)
        return new, opt_state, metrics

    return TrainStep(ipc_step, wopt, q, method, jit)


def make_eval_step(
    net: Network,
    query,
    *,
    steps: int | None = None,
    activity_lr: float | None = None,
    activity_optimizer=None,
    init: str | None = None,
    init_overrides: Mapping[str, str] | None = None,
    init_options: Mapping[str, Any] | None = None,
    solver: str | None = None,
    ode_options: Mapping[str, Any] | None = None,
    tol: float = 0.0,
    activity_scale: str = "sample",
    jit: bool = True,
) -> "EvalStep":
    """A jitted ``(net, batch, key=None) -> {read node: value}`` for a test query.

    When the forward pass is the equilibrium (a DAG, every root clamped, no clamped node with
    parents: then F = 0 there) the read-outs are the forward predictions, no inference is run.
    Otherwise: initialise, infer, read (free leaves read their prediction: probabilities for a
    categorical node). The label is never clamped here unless the query clamps it."""
    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    q.check(net)
    T, lr, aopt, init, solver = _resolve(net, steps, activity_lr, activity_optimizer, init, solver)
    reads = q.read or tuple(n for n in net.plan.node_names if n not in q.clamp)
    overrides = dict(init_overrides or {})
    direct_order = None
    clamped_with_parents = any(net.plan.parents_of[n] for n in q.clamp)
    init_eff = net.plan.settings.get("init") if init is None else init
    if not clamped_with_parents and init_eff in ("auto", "forward") and not overrides:
        try:
            direct_order = topological_order(net, q.clamp)
        except ValueError:
            direct_order = None

    def run(net_, batch, key=None):
        h = clamp_data(net_, q, batch)
        if direct_order is not None:
            hf = forward_acts(net_, h, direct_order)
        else:
            h0 = initialise(net_, q, h, default=init, overrides=overrides, key=key,
                            options=init_options)
            hf = run_inference(net_, q, h0, solver=solver, steps=T, lr=lr, optimizer=aopt,
                               tol=tol, activity_scale=activity_scale,
                               ode_options=ode_options).h
        return {n: net_.get(hf, n) for n in reads}

    return EvalStep(run, q, reads, direct_order is not None, jit)


class EvalStep:
    """A jitted ``(net, batch, key=None) -> {read node: value}``; ``direct`` says whether it reads
    the forward pass (no inference); ``traces`` counts traces."""

    def __init__(self, fn: Callable, query: QueryPlan, reads: tuple[str, ...], direct: bool,
                 jit: bool = True):
        self.query, self.reads, self.direct = query, reads, direct
        self.traces = 0

        def counted(net_, batch, key):
            self.traces += 1
            return fn(net_, batch, key)

        self._fn = eqx.filter_jit(counted) if jit else counted

    def __call__(self, net: Network, batch: Mapping[str, Any], key=None):
        return self._fn(net, dict(batch), key)
