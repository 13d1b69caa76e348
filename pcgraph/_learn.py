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
from jaxtyping import PRNGKeyArray

from ._config import (GradientDescent, Inference, Initialisation, precision_dtype,
                      resolve_config, with_steps)
from ._cost import step_cost
from ._custom_types import Batch
from ._energy import energy, forward_acts, node_energies, node_prediction, topological_order
from ._infer import (
    clamp_data,
    condition_grads,
    energy_grad_fn,
    impose_observed,
    infer,
    merge_free,
    observed_masks,
    reimpose,
)
from ._init import InitError, make_initialiser
from ._network import Network
from ._query import QueryPlan, compile_query
from ._registry import ALGORITHMS


def _no_partial(q: QueryPlan, what: str) -> None:
    if q.partial:
        n, m = q.partial[0]
        raise ValueError(f"query {q.name!r} clamps {n!r} where {m!r} (a partial observation); "
                         f"such a query is not {what}: answer it with pcgraph.relax(net, "
                         f"{q.name!r}, {{{n!r}: values, {m!r}: mask}})")


def _targets(q: QueryPlan):
    """The energy terms of the output loss: clamped nodes', and partly clamped nodes' (their
    observed elements, with the masks)."""
    if not q.partial:
        return q.clamped_targets
    part = {n for n, _ in q.partial}
    return tuple(tuple(c and (k or n in part) for c, k, n in zip(cs, ks, names))
                 for cs, ks, names in zip(q.counts, q.clamped, q.layout))


def _params(net: Network):
    return eqx.filter(net, eqx.is_inexact_array)


class TrainStep:
    """A jitted training step.

    ``step(net, opt_state, batch, key=None)`` returns ``(net, opt_state, metrics)``; a step whose
    initialisation carries state between batches (null, avg, mem, amortised: ``step.stateful``)
    is called as ``step(net, opt_state, batch, key, carry=carry)`` and returns
    ``(net, opt_state, metrics, carry)``; ``carry = step.init_carry(net, batch_size)`` starts it.

    ``init(net)`` makes the optimiser state; ``traces`` counts how often the step was traced;
    ``smm`` holds the SMM accounting of seed 004 eq. 5-6 (``smm_pc`` = 2T + ``init_smm``,
    ``smm_bp`` = 2L − 1, ``smm_per_update``); ``initialiser`` is the static init plan (None for bp)."""

    def __init__(self, fn: Callable, optimizer: optax.GradientTransformation, query: QueryPlan,
                 method: str, jit: bool = True, initialiser=None, smm: Mapping | None = None):
        self.optimizer = optimizer
        self.query = query
        self.method = method
        self.initialiser = initialiser
        self.smm = dict(smm or {})
        self.traces = 0

        def counted(*args):
            self.traces += 1
            return fn(*args)

        self.traced = counted  # the pure step, counting traces (``_chunked`` scans it)
        self._fn = eqx.filter_jit(counted) if jit else counted

    @property
    def stateful(self) -> bool:
        return self.initialiser is not None and self.initialiser.stateful

    def init(self, net: Network, batch_size: int | None = None, key=None):
        """The optimiser state; for a stateful step a :class:`StepState` bundling it with the
        initialiser state (``batch_size`` is then needed for ``null``, which remembers a batch)."""
        opt = self.optimizer.init(_params(net))
        if not self.stateful:
            return opt
        if batch_size is None and self.initialiser.uses("null"):
            raise InitError("init = null remembers a whole batch: give step.init(net, batch_size)")
        return StepState(opt, self.init_carry(net, batch_size or 1, key))

    def init_carry(self, net: Network, batch_size: int, key=None):
        """The initialiser state for batches of ``batch_size`` (None when no method needs one)."""
        if self.initialiser is None:
            return None
        return self.initialiser.init_state(net, batch_size, key)

    def __call__(self, net: Network, opt_state, batch: Batch, key: PRNGKeyArray | None = None,
                 carry=None):
        """``(net, opt_state, metrics)``; with ``carry=`` ``(net, opt_state, metrics, carry)``;
        with a :class:`StepState` as ``opt_state``, the returned state is one too."""
        if isinstance(opt_state, StepState):
            net, o, metrics, c = self._fn(net, opt_state.opt_state, dict(batch), key,
                                          opt_state.carry)
            return net, StepState(o, c), metrics
        if carry is None:
            if self.stateful:
                raise InitError(
                    "this step's initialisation (" + ", ".join(
                        m for m in ("null", "avg", "mem", "amortised") if self.initialiser.uses(m))
                    + ") carries state between batches: start from state = step.init(net, "
                    "batch_size), or pass carry=step.init_carry(net, batch_size) explicitly")
            net, opt_state, metrics, _ = self._fn(net, opt_state, dict(batch), key, None)
            return net, opt_state, metrics
        return self._fn(net, opt_state, dict(batch), key, carry)


class StepState(eqx.Module):
    """The weight optimiser state and the initialiser state of a stateful step, as one pytree."""

    opt_state: Any
    carry: Any


def _defaults(net: Network, inference, init, weight_optimizer=None, *, need_weights=True):
    """Unset objects from the model's settings (one resolution, only when something is unset)."""
    if inference is None or (need_weights and weight_optimizer is None):
        cfg = resolve_config(net.plan.settings)
        inference = cfg.inference if inference is None else inference
        weight_optimizer = cfg.weight_optimizer if weight_optimizer is None else weight_optimizer
    return inference, Initialisation() if init is None else init, weight_optimizer


def make_train_step(
    net: Network,
    query,
    *,
    method: str = "pc",
    inference: Inference | None = None,
    init: Initialisation | None = None,
    weight_optimizer: optax.GradientTransformation | None = None,
    record_node_energies: bool = False,
    jit: bool = True,
    precision: str = "fp32",
) -> TrainStep:
    """One jitted training step for ``query`` (``method`` = pc | ipc | bp).

    ``inference`` (a ``GradientDescent`` or ``GradientFlow``), ``init`` (an ``Initialisation``)
    and ``weight_optimizer`` (optax) default to the model's settings. ``precision = "bf16"``
    (pc, bp): the step reads a bf16 copy of the weights (matmuls accumulate in fp32); activities,
    energies, the weights, their gradients and the optimiser state stay at the network's own
    precision (docs/speed.md: bf16 optimiser moments stall, bf16 activities collapse training)."""
    if method not in ALGORITHMS:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(ALGORITHMS)}")
    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    q.check(net)
    if method != "pc":  # pc trains on partial observations (masked elements are free)
        _no_partial(q, f"trained on by method {method!r} (method 'pc' is)")
    inference, init, wopt = _defaults(net, inference, init, weight_optimizer)
    L = net.plan.longest_path
    cast = compute_cast(precision)
    if method == "bp":
        return TrainStep(_bp_step(topological_order(net, q.clamp), q, wopt, cast), wopt, q, method,
                         jit, None, step_cost("bp", inference.steps, 0, L))
    initer = make_initialiser(net, q, init, train=True)
    smm = step_cost(method, inference.steps, initer.smm, L)
    if method == "ipc" and not isinstance(inference, GradientDescent):
        raise ValueError("iPC runs discrete steps: use solver = gd (a GradientDescent)")
    if method == "pc":
        fn = _pc_step(q, inference, initer, wopt, record_node_energies, cast)
    elif cast is not None:
        raise ValueError("precision = bf16 trains with pc or bp, not ipc")
    else:
        fn = _ipc_step(q, inference, initer, wopt, record_node_energies)
    return TrainStep(fn, wopt, q, method, jit, initer, smm)


def compute_cast(precision: str):
    """None (compute at the network's precision) or a function casting a network's floating
    arrays to the ``precision`` setting's compute dtype."""
    dtype = precision_dtype(precision)
    if dtype is None:
        return None

    def cast(tree):
        return jax.tree_util.tree_map(
            lambda a: a.astype(dtype) if eqx.is_inexact_array(a) else a, tree)

    return cast


def _same_dtypes(new, old):
    """``new`` (an initialiser state computed at the compute precision) at ``old``'s dtypes."""
    return jax.tree_util.tree_map(
        lambda a, b: a.astype(b.dtype) if eqx.is_inexact_array(a) else a, new, old)


def _bp_step(order: tuple[str, ...], q: QueryPlan, wopt, cast=None):
    """Backprop through the forward pass of the DAG from the clamped roots (the baseline)."""
    q_out = q.with_counts(q.clamped_targets)
    use = cast or (lambda n: n)

    def bp_step(net_, opt_state, batch, key, carry):
        h = clamp_data(net_, q, batch)

        def loss(n):
            n = use(n)
            return energy(n, forward_acts(n, h, order), q_out)

        val, grads = eqx.filter_value_and_grad(loss)(net_)
        updates, opt_state = wopt.update(grads, opt_state, _params(net_))
        net_ = eqx.apply_updates(net_, updates)
        metrics = {"loss": val, "energy_start": val, "energy_end": val, "loss_end": val,
                   "steps": jnp.asarray(0)}
        return net_, opt_state, metrics, carry

    return bp_step


def _init_acts(q: QueryPlan, inference: Inference, initer):
    """``(net, batch, key, carry) -> (clamped h, h(0), carry)``: clamp, fit the memories on the
    first batch (from a longer relaxation from zero where forward is impossible), initialise."""
    ref = with_steps(inference, max(inference.steps, int(initer.options["mem_ref_steps"])))

    def init_acts(net_, batch, key, carry, dtype=None):
        h = clamp_data(net_, q, batch, dtype)
        carry = initer.prepare(net_, h, carry,
                               lambda hh: infer(net_, q, hh, ref, energies=False).h)
        return h, initer(net_, h, carry, key), carry

    if q.partial:  # observed elements of partly clamped nodes held at the data
        plain = init_acts

        def init_acts(net_, batch, key, carry, dtype=None):
            h, h0, carry = plain(net_, batch, key, carry, dtype)
            return h, impose_observed(q, h0, h, observed_masks(net_, q, batch, h[0].dtype)), carry

    return init_acts


def _pc_step(q: QueryPlan, inference: Inference, initer, wopt, record_node_energies: bool,
             cast=None):
    """initialise → infer → stop_gradient → ∂F/∂θ at the relaxed activities → optax update.
    ``cast``: compute with a cast copy of the weights (``precision``); ∂F/∂θ flows back through
    the cast to the network's own dtype."""
    init_acts = _init_acts(q, inference, initer)
    q_out = q.with_counts(_targets(q))
    use = cast or (lambda n: n)

    def pc_step(net_, opt_state, batch, key, carry):
        nc = use(net_)
        carry_in = carry
        # activities stay at the network's own precision (bf16 activities collapse training:
        # docs/speed.md); only the weights the loop reads are cast
        h, h0, carry = init_acts(nc, batch, key, carry, net_.dtype)
        obs = observed_masks(nc, q, batch, h[0].dtype)  # None without partial observations
        # F at t = 0 once, not F at every inference step (only ∇F is needed in the loop)
        res = infer(nc, q, h0, inference, observed=obs, energies=False)
        hs = jax.lax.stop_gradient(res.h)
        F_end, grads = eqx.filter_value_and_grad(lambda n: energy(use(n), hs, q, obs))(net_)
        F0 = energy(nc, h0, q, obs)
        carry, init_loss = initer.update(nc, carry, h, hs)
        if cast is not None and carry_in is not None:
            carry = _same_dtypes(carry, carry_in)
        metrics = {
            "energy_start": F0,
            "energy_end": F_end,
            "loss": energy(nc, h0, q_out, obs),
            "loss_end": energy(nc, hs, q_out, obs),
            "steps": res.steps,
            "init_loss": init_loss,
        }
        if record_node_energies:
            metrics["node_energies"] = node_energies(nc, hs, q, obs)
        updates, opt_state = wopt.update(grads, opt_state, _params(net_))
        net_ = eqx.apply_updates(net_, updates)
        return net_, opt_state, metrics, carry

    return pc_step


def _ipc_step(q: QueryPlan, inference: GradientDescent, initer, wopt, record_node_energies: bool):
    """Incremental PC: θ updated at every inference step, from the same ∇F evaluation."""
    init_acts = _init_acts(q, inference, initer)
    q_out = q.with_counts(q.clamped_targets)
    aopt, T = inference.optimizer, max(int(inference.steps), 1)

    def ipc_step(net_, opt_state, batch, key, carry):
        h, h0, carry = init_acts(net_, batch, key, carry)
        params, static = eqx.partition(net_, eqx.is_inexact_array)
        free0 = tuple(h0[g] for g in q.free_groups)
        scale = float(h0[0].shape[1]) if inference.activity_scale == "sample" else 1.0
        _, masks = energy_grad_fn(net_, q, h0, inference.activity_scale)

        def F(free, p):
            return energy(eqx.combine(p, static), merge_free(h0, q, free), q)

        vg = jax.value_and_grad(F, argnums=(0, 1))

        def body(c, _):
            free, aost, p, wost = c
            val, (gh, gp) = vg(free, p)
            gh = condition_grads(gh, masks, scale)
            upd, aost = aopt.update(gh, aost, free)
            free = reimpose(optax.apply_updates(free, upd), free0, masks)
            wupd, wost = wopt.update(gp, wost, p)
            p = eqx.apply_updates(p, wupd)
            return (free, aost, p, wost), val

        c = (free0, aopt.init(free0), params, opt_state)
        (free, _, params, opt_state), energies = jax.lax.scan(body, c, None, length=T)
        new = eqx.combine(params, static)
        hs = jax.lax.stop_gradient(merge_free(h0, q, free))
        carry, init_loss = initer.update(net_, carry, h, hs)
        metrics = {
            "energy_start": energies[0],
            "energy_end": energy(new, hs, q),
            "loss": energy(net_, h0, q_out),
            "loss_end": energy(new, hs, q_out),
            "steps": jnp.asarray(T),
            "init_loss": init_loss,
        }
        if record_node_energies:
            metrics["node_energies"] = node_energies(new, hs, q)
        return new, opt_state, metrics, carry

    return ipc_step


def make_eval_step(
    net: Network,
    query,
    *,
    inference: Inference | None = None,
    init: Initialisation | None = None,
    reconstruct: str | None = None,
    jit: bool = True,
) -> "EvalStep":
    """A jitted ``(net, batch, key=None, carry=None) -> {read node: value}`` for a test query.

    When the forward pass is the equilibrium (a DAG, every root clamped, no clamped node with
    parents: then F = 0 there) the read-outs are the forward predictions, no inference is run.
    Otherwise: initialise, infer, read (free leaves read their prediction: probabilities for a
    categorical node). The label is never clamped here unless the query clamps it.

    ``reconstruct``: a clamped node; the step then returns ``{"sq_err": [B], "energy": F}``, the
    per-example mean squared error of its prediction from the relaxed activities (a generative
    model's reconstruction) and the relaxed energy.

    A query with partial observations (``clamp img where mask``) takes each mask from the batch
    beside the node's values: the observed elements are held at the data, the missing ones relaxed
    (reading the node gives the data where observed and the prediction where missing).

    ``carry``: the training run's initialiser state, needed where a node of this query uses
    ``mem`` (retrieval from the trained memories), ``amortised`` or ``null``. ``avg`` needs labels,
    so at test avg nodes are forward-initialised (an error where forward is impossible)."""
    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    q.check(net)
    inference, init, _ = _defaults(net, inference, init, need_weights=False)
    reads = q.read or tuple(n for n in net.plan.node_names if n not in q.clamp)
    direct_order = None
    clamped_with_parents = any(net.plan.parents_of[n] for n in q.clamp)
    method = net.plan.settings.get("init") if init.method is None else init.method
    if (not clamped_with_parents and not q.partial and method in ("auto", "forward", "avg")
            and not init.nodes):
        try:
            direct_order = topological_order(net, q.clamp)
        except ValueError:
            direct_order = None
    initer = None if direct_order is not None else make_initialiser(net, q, init, train=False)

    def run(net_, batch, key=None, carry=None):
        h = clamp_data(net_, q, batch)
        obs = observed_masks(net_, q, batch, h[0].dtype)  # None without partial observations
        if direct_order is not None:
            hf = forward_acts(net_, h, direct_order)
        else:
            h0 = impose_observed(q, initer(net_, h, carry, key), h, obs)
            hf = infer(net_, q, h0, inference, energies=False, observed=obs).h
        if reconstruct is not None:
            x = net_.get(h, reconstruct)
            mu = node_prediction(net_, hf, reconstruct)
            err = jnp.mean(((x - mu) ** 2).reshape(x.shape[0], -1), axis=-1)
            return {"sq_err": err, "energy": energy(net_, hf, q, obs)}
        return {n: net_.get(hf, n) for n in reads}

    return EvalStep(run, q, reads, direct_order is not None, jit, initer)


class EvalStep:
    """A jitted ``(net, batch, key=None, carry=None) -> {read node: value}``; ``direct`` says
    whether it reads the forward pass (no inference); ``traces`` counts traces; ``initialiser`` is
    the init plan (None when direct); ``stateful``: whether it needs the training ``carry``."""

    def __init__(self, fn: Callable, query: QueryPlan, reads: tuple[str, ...], direct: bool,
                 jit: bool = True, initialiser=None):
        self.query, self.reads, self.direct = query, reads, direct
        self.initialiser = initialiser
        self.traces = 0

        def counted(net_, batch, key, carry):
            self.traces += 1
            return fn(net_, batch, key, carry)

        self._fn = eqx.filter_jit(counted) if jit else counted

    @property
    def stateful(self) -> bool:
        return self.initialiser is not None and self.initialiser.stateful

    def __call__(self, net: Network, batch: Batch, key: PRNGKeyArray | None = None,
                 carry=None) -> dict[str, Any]:
        if isinstance(carry, StepState):
            carry = carry.carry
        if carry is None and self.stateful:
            ms = ", ".join(m for m in ("null", "mem", "amortised") if self.initialiser.uses(m))
            raise InitError(f"query {self.query.name!r} initialises nodes with {ms}: pass "
                            "carry=result.state.carry (result = pcgraph.fit(...)) or carry=run.carry "
                            "(run = pcgraph.load_run(DIR)): the state learned in training")
        return self._fn(net, dict(batch), key, carry)
