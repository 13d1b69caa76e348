"""Chunked dispatch: ``K`` training steps per call, a ``lax.scan`` over ``K`` device-resident
batches (``fit``'s ``steps_per_dispatch``).

One dispatch per step costs a fixed host overhead (argument flattening, launch, the metrics'
buffers) that dominates a small network's step (the digits MLP's step is well under a
millisecond). :class:`ChunkedEpochSteps` stacks ``K`` batches on the host, moves them to the device
in one transfer and runs the same step function ``K`` times inside one jitted ``lax.scan``; the
``[K]`` metrics come back in one fetch. Each step's PRNG key is ``fold_in(epoch_key, batch)`` as in
the per-step loop, so the parameters equal those of ``K = 1`` (the same XLA computation per
step, inside a loop; ``tests/test_chunked.py`` states the tolerance).

Divergence is still located to the step and node: the chunk's metrics are checked step by step
(``EpochSteps._flush``), and a non-finite one is replayed from the state before the chunk with the
single-step function, then traced (``_divergence``).

``K``: ``steps_per_dispatch`` (``_registry``; 0 = automatic, :func:`steps_per_dispatch`). A
last, shorter chunk (when ``K`` does not divide the epoch) is a second program (one more trace).
"""

from __future__ import annotations

import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._divergence import EpochStats, EpochSteps
from ._registry import AUTO_DISPATCH_BYTES, AUTO_STEPS_PER_DISPATCH


def steps_per_dispatch(requested: int, steps_per_epoch: int, batch_bytes: int,
                       sharded: bool = False) -> int:
    """``K`` for an epoch of ``steps_per_epoch`` steps of ``batch_bytes`` of data each.

    ``requested`` > 0 is taken as given (capped at the epoch). ``0`` (auto): 1 on a device mesh
    (the sharded step places each batch itself), else at most ``AUTO_STEPS_PER_DISPATCH`` steps and
    ``AUTO_DISPATCH_BYTES`` of stacked batches; the whole epoch when it fits, else the largest
    divisor of the epoch in ``[cap/2, cap]`` (no shorter last chunk), else ``cap``."""
    if requested > 0:
        return max(1, min(int(requested), steps_per_epoch))
    if sharded:
        return 1
    cap = max(1, min(AUTO_STEPS_PER_DISPATCH, AUTO_DISPATCH_BYTES // max(batch_bytes, 1)))
    if steps_per_epoch <= cap:
        return steps_per_epoch
    for k in range(cap, (cap + 1) // 2 - 1, -1):
        if steps_per_epoch % k == 0:
            return k
    return cap


def batch_bytes(batch) -> int:
    return int(sum(np.asarray(v).nbytes for v in batch.values()))


def make_chunk(step_fn):
    """The jitted ``(net, opt_state, carry, batches [K, ...], epoch_key, first batch index) ->
    (net, opt_state, stacked metrics, carry)`` of a :class:`~pcgraph._learn.TrainStep`."""
    fn = step_fn.traced  # the step as traced (counts traces), not jitted

    def chunk(net, opt_state, carry, batches, ekey, b0):
        params, static = eqx.partition(net, eqx.is_inexact_array)
        K = next(iter(batches.values())).shape[0]
        keys = jax.vmap(lambda i: jax.random.fold_in(ekey, i))(b0 + jnp.arange(K))

        def body(c, xs):
            p, o, ca = c
            n, o, met, ca = fn(eqx.combine(p, static), o, xs[0], xs[1], ca)
            return (eqx.filter(n, eqx.is_inexact_array), o, ca), met

        (params, opt_state, carry), mets = jax.lax.scan(body, (params, opt_state, carry),
                                                        (batches, keys))
        return eqx.combine(params, static), opt_state, mets, carry

    return eqx.filter_jit(chunk)


class ChunkedEpochSteps(EpochSteps):
    """:class:`~pcgraph._divergence.EpochSteps` with ``K`` steps per dispatch (same call, same
    events, same statistics; the first chunk's time is its compile time)."""

    def __init__(self, step_fn, tracer, check_every, emit, steps_per_epoch, k: int):
        super().__init__(step_fn, tracer, check_every, emit, steps_per_epoch)
        self.k = k
        self.chunk = make_chunk(step_fn)
        self._ekey = None

    def __call__(self, net, state, batches, ekey):
        epoch = state.epoch
        stats = EpochStats(first_batch=self.first_batch)
        t_epoch = time.perf_counter()
        opt_state, carry = state.opt_state, state.carry
        self._ekey = ekey
        bi = 0
        for group in _groups(batches, self.k):
            if self.first_batch is None:
                self.first_batch = stats.first_batch = group[0]
            stacked = {k: np.stack([b[k] for b in group]) for k in group[0]}
            window = (net, opt_state, carry)  # the state before this chunk
            t0 = time.perf_counter()
            net, opt_state, mets, carry = self.chunk(net, opt_state, carry, stacked, ekey,
                                                     jnp.asarray(bi))
            fetched = jax.device_get(mets)  # the chunk's metrics, one fetch
            if self.first_call:
                stats.compile_s = time.perf_counter() - t0
                stats.compile_steps = len(group)
                self.first_call = False
            pending = []
            for j, b in enumerate(group):
                state.step += 1
                stats.steps += 1
                met = jax.tree_util.tree_map(lambda a: a[j], fetched)
                pending.append((state.step, bi + j, met, b, None))
            bi += len(group)
            self._flush(pending, window, epoch, stats)
        jax.block_until_ready(net)
        stats.train_time = time.perf_counter() - t_epoch
        state.opt_state, state.carry = opt_state, carry
        return net, stats

    def _trace_failure(self, pending, j, window, batch):
        keyed = [(g, bi, m, b, jax.random.fold_in(self._ekey, bi)) for g, bi, m, b, _ in pending]
        return super()._trace_failure(keyed, j, window, batch)


def _groups(batches, k: int):
    group = []
    for b in batches:
        group.append(b)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group
