"""One epoch of training steps, with the metrics fetched in bursts and divergence located.

:class:`EpochSteps` calls the jitted step on every batch of an epoch without a host sync; every
``check_every`` steps it fetches the pending metrics, reports them (``step`` events) and checks
that they are finite. A non-finite energy or loss raises :class:`TrainingDiverged`, naming the
step and the node whose energy became non-finite first (found by replaying the pending steps
from the last checked state and tracing the inference of the failing batch).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from ._errors import Error


class TrainingDiverged(Error, RuntimeError):
    """The energy or loss became non-finite. ``step`` (global, 1-based), ``epoch`` (1-based),
    ``batch`` (1-based within the epoch), ``nodes`` (those with a non-finite energy) and the last
    finite ``node_energies`` are attributes."""

    def __init__(self, message: str, *, step: int, epoch: int, batch: int,
                 nodes: tuple[str, ...] = (), node_energies: Mapping[str, float] | None = None):
        super().__init__(message)
        self.step = step
        self.epoch = epoch
        self.batch = batch
        self.nodes = tuple(nodes)
        self.node_energies = dict(node_energies or {})


def call_step(step_fn, net, opt_state, batch, key, carry):
    """One step, always ``(net, opt_state, metrics, carry)``."""
    if carry is None:
        net, opt_state, met = step_fn(net, opt_state, batch, key)
        return net, opt_state, met, None
    return step_fn(net, opt_state, batch, key, carry=carry)


@dataclass
class EpochStats:
    """What an epoch of steps measured."""

    sums: dict = field(default_factory=lambda: {"energy": 0.0, "energy_end": 0.0, "loss": 0.0})
    count: int = 0
    compile_s: float = 0.0
    compile_steps: int = 1  # steps run by the compiling call (a chunk of them when chunked)
    train_time: float = 0.0
    steps: int = 0
    last_finite: dict = field(default_factory=dict)
    first_batch: Any = None

    def metrics(self, epoch: int, step: int, record: Mapping) -> dict:
        """The epoch's training metrics (evaluation fills ``*_accuracy`` / ``*_mse``)."""
        c = max(self.count, 1)
        timed = self.steps - (self.compile_steps if self.compile_s else 0)
        return {
            "type": "epoch", "epoch": epoch + 1, "step": step,
            "energy": self.sums["energy"] / c, "energy_end": self.sums["energy_end"] / c,
            "train_loss": self.sums["loss"] / c,
            "train_accuracy": None, "test_accuracy": None,
            "smm_per_update": record["smm_per_update"],
            "total_smm": record["smm_per_batch"] * step,
            "ms_per_step": 1000.0 * (self.train_time - self.compile_s) / max(timed, 1),
            "compile_time_s": self.compile_s or None, "epoch_time_s": self.train_time,
        }


class EpochSteps:
    """``run(net, state, batches, epoch_key) -> (net, EpochStats)``: one epoch of steps; updates
    ``state.step``, ``state.opt_state`` and ``state.carry`` (see the module docstring)."""

    def __init__(self, step_fn, tracer: Callable | None, check_every: int,
                 emit: Callable[[dict], Any], steps_per_epoch: int):
        self.step_fn, self.tracer, self.check_every = step_fn, tracer, check_every
        self.emit, self.steps_per_epoch = emit, steps_per_epoch
        self.first_call = True  # a new step function compiles on its first call
        self.first_batch = None

    def __call__(self, net, state, batches, ekey):
        epoch = state.epoch
        stats = EpochStats(first_batch=self.first_batch)
        t_epoch = time.perf_counter()
        opt_state, carry = state.opt_state, state.carry
        window = (net, opt_state, carry)  # the state before the pending steps
        pending: list = []  # (global step, batch index, metrics on device, batch, key)
        for bi, batch in enumerate(batches):
            if self.first_batch is None:
                self.first_batch = stats.first_batch = batch
            key = jax.random.fold_in(ekey, bi)
            t0 = time.perf_counter()
            net, opt_state, met, carry = call_step(self.step_fn, net, opt_state, batch, key, carry)
            if self.first_call:
                jax.block_until_ready(met)
                stats.compile_s = time.perf_counter() - t0
                self.first_call = False
            state.step += 1
            stats.steps += 1
            pending.append((state.step, bi, met, batch, key))
            if len(pending) >= self.check_every:
                self._flush(pending, window, epoch, stats)
                window = (net, opt_state, carry)
        self._flush(pending, window, epoch, stats)
        jax.block_until_ready(net)
        stats.train_time = time.perf_counter() - t_epoch
        state.opt_state, state.carry = opt_state, carry
        return net, stats

    def _flush(self, pending: list, window, epoch: int, stats: EpochStats) -> None:
        """Fetch the pending metrics, check them, report them."""
        if not pending:
            return
        fetched = jax.device_get([p[2] for p in pending])
        for j, ((gstep, bi, _, batch, _), met) in enumerate(zip(pending, fetched)):
            e0, e1, lo = float(met["energy_start"]), float(met["energy_end"]), float(met["loss"])
            ne = {k: float(v) for k, v in (met.get("node_energies") or {}).items()}
            if not all(math.isfinite(v) for v in (e0, e1, lo)):
                trace = self._trace_failure(pending, j, window, batch)
                diverged(gstep, epoch + 1, bi + 1, e0, e1, lo, ne, stats.last_finite, trace)
            stats.last_finite = ne or stats.last_finite
            stats.sums["energy"] += e0
            stats.sums["energy_end"] += e1
            stats.sums["loss"] += lo
            stats.count += 1
            self.emit({"kind": "step", "epoch": epoch + 1, "batch": bi + 1,
                       "steps_per_epoch": self.steps_per_epoch, "step": gstep, "energy": e0,
                       "energy_end": e1, "loss": lo})
        pending.clear()

    def _trace_failure(self, pending: list, j: int, window, batch):
        """The per-node inference trace of the failing batch, from the network before it
        (replaying the pending steps before entry ``j``: deterministic)."""
        if self.tracer is None:
            return None
        try:
            n_, o_, c_ = window
            for _, _, _, b_, k_ in pending[:j]:
                n_, o_, _, c_ = call_step(self.step_fn, n_, o_, b_, k_, c_)
            return self.tracer(n_, batch, c_)
        except Exception:  # noqa: BLE001 - diagnosis only
            return None


@jax.jit
def _finite_groups(params):
    return tuple(
        jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(p)]))
        if jax.tree_util.tree_leaves(p) else jnp.asarray(True)
        for p in params
    )


def nonfinite_params(net) -> list[str]:
    """Names of the terms whose parameters hold a NaN/inf (one small jitted reduction)."""
    flags = jax.device_get(_finite_groups(net.params))
    bad = []
    for ok, tg in zip(flags, net.plan.terms):
        if not bool(ok):
            bad.extend(tg.names)
    return bad


def check_params(net, step: int, epoch: int, steps_per_epoch: int, last_finite: dict) -> None:
    """Raise :class:`TrainingDiverged` when a weight update made parameters non-finite."""
    bad = nonfinite_params(net)
    if bad:
        raise TrainingDiverged(
            f"training diverged at step {step} (epoch {epoch + 1}): the weight update "
            f"made the parameters of {', '.join(bad[:8])} non-finite; lower the weight "
            "learning rate", step=step, epoch=epoch + 1, batch=steps_per_epoch,
            nodes=(), node_energies=last_finite)


def _first_nonfinite(trace: Mapping[str, list]) -> tuple[list[str], str]:
    """The nodes whose energy became non-finite first in an inference trace, and a sentence."""
    T = max(len(v) for v in trace.values())
    first = next((t for t in range(T)
                  if any(not math.isfinite(v[t]) for v in trace.values() if t < len(v))), None)
    if first is None:
        return [], ""
    bad = [k for k, v in trace.items() if first < len(v) and not math.isfinite(v[first])]
    where = f"the energy of node(s) {', '.join(bad)} became non-finite first, at " \
            f"inference step t={first}"
    if first > 0:
        prev = {k: v[first - 1] for k, v in trace.items() if first - 1 < len(v)}
        top = sorted(prev, key=lambda k: -abs(prev[k]) if math.isfinite(prev[k]) else 0)
        where += " (at t={}: {})".format(first - 1, ", ".join(f"{k}={prev[k]:.3g}" for k in top[:4]))
    return bad, where


def diverged(gstep, epoch, batch, e0, e1, lo, ne, last_finite, trace=None):
    """Raise :class:`TrainingDiverged` for a step with a non-finite energy or loss."""
    what = ", ".join(f"{n} = {v}" for n, v in (("energy at t=0", e0), ("relaxed energy", e1),
                                                 ("output loss", lo)) if not math.isfinite(v))
    bad = [k for k, v in ne.items() if not math.isfinite(v)]
    first_bad, where = _first_nonfinite(trace) if trace else ([], "")
    if where:
        bad = first_bad
    else:
        if bad:
            where = f"non-finite energy in node(s) {', '.join(bad)}"
        elif ne:
            top = max(ne, key=lambda k: abs(ne[k]))
            bad = [top]
            where = f"largest node energy in {top} ({ne[top]:.3g})"
        else:
            where = "non-finite output loss"
        if last_finite:
            top = max(last_finite, key=lambda k: abs(last_finite[k]))
            where += (f"; at the previous step the largest energy was in {top} "
                      f"({last_finite[top]:.3g})")
    raise TrainingDiverged(
        f"training diverged at step {gstep} (epoch {epoch}, batch {batch}): {what}; {where}. "
        "Lower the weight or activity learning rate (or the number of inference steps).",
        step=gstep, epoch=epoch, batch=batch, nodes=tuple(bad), node_energies=last_finite)
