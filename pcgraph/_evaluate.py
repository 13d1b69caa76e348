"""Evaluation: accuracy, read-out MSE and reconstruction MSE over a whole split, and the per-node
energy trace of one batch (for plots and divergence reports).

Evaluation never clamps the label: the test query clamps the input, the label node is read (after
inference where the forward pass is not the equilibrium) and accuracy is the argmax against the
labels, over every example (the last batch is padded and masked). A generative model reports the
reconstruction MSE of its data node (its prediction from the relaxed latents vs the data).

An :class:`Evaluator` holds the jitted evaluation steps (``_learn.make_eval_step``: one step for
read-outs and reconstructions) of one configuration: ``fit`` builds one per run and calls it every
epoch (compiled once); :func:`evaluate` builds one per call.
"""

from __future__ import annotations

from typing import Any, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import data as _data
from ._binding import (
    bind,
    check_arrays,
    clamped_arrays,
    eval_batches,
    mask_arrays,
    prepare_dataset,
)
from ._config import GradientDescent, Inference, Initialisation, resolve_config
from ._energy import node_energies
from ._infer import clamp_data, impose_observed, infer, merge_free, observed_masks
from ._init import make_initialiser
from ._learn import EvalStep, make_eval_step
from ._network import Network
from ._query import compile_query
from ._registry import EVAL_BATCH_SIZE


class Evaluator:
    """``evaluator(net, data, query=..., ...)`` with the evaluation steps of one ``inference`` and
    ``init``, built on first use per (query, reconstructed node) and kept (one compilation)."""

    def __init__(self, inference: Inference, init: Initialisation, mesh: Any = None):
        self.inference, self.init, self.mesh = inference, init, mesh  # mesh: pcgraph._sharding
        self._steps: dict = {}

    def step(self, net: Network, query: str, reconstruct: str | None = None) -> EvalStep:
        key = (query, reconstruct)
        if key not in self._steps:
            self._steps[key] = make_eval_step(net, query, inference=self.inference,
                                              init=self.init, reconstruct=reconstruct)
            if self.mesh is not None:  # each batch split over the mesh's devices
                from ._sharding import shard_eval

                self._steps[key] = shard_eval(self._steps[key], self.mesh)
        return self._steps[key]

    def __call__(self, net: Network, data, *, query: str = "test", split: str = "test",
                 batch_size: int = EVAL_BATCH_SIZE, train_query: str = "train",
                 max_examples: int | None = None, carry: Any = None) -> dict:
        if isinstance(data, _data.Dataset):
            return self._dataset(net, data, query, split, batch_size, train_query, max_examples,
                                 carry)
        return self._arrays(net, data, query, batch_size, carry)

    def _dataset(self, net, data, query, split, batch_size, train_query, max_examples, carry):
        binding = bind(net, train_query, query)
        ds = prepare_dataset(net, data, binding)
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if x is None:
            raise ValueError(f"data set {ds.name} has no {split} split")
        if max_examples is not None and len(x) > max_examples:
            x, y = x[:max_examples], y[:max_examples]
        if binding.generative:
            qnames = {q.name for q in net.plan.queries}
            q = query if query in qnames else binding.train_query
            out = self._recon(net, q, {binding.input: x}, binding.input, batch_size, carry)
            return {**out, "query": q}
        out = self._accuracy(net, query, {binding.input: x}, binding.label, y, batch_size, carry)
        return {**out, "query": query}

    def _arrays(self, net, data, query, batch_size, carry):
        m = net.plan
        if query not in {q.name for q in m.queries}:
            raise KeyError(f"model {m.name!r} has no query {query!r}")
        q = m.query(query)
        masks = mask_arrays(net, data, query, "evaluation data")  # clamp NODE where MASK
        arrays = check_arrays(net, {k: v for k, v in data.items() if k not in masks},
                              "evaluation data")
        inputs = {**clamped_arrays(net, arrays, query, "data"), **masks}
        targets = {n: arrays[n] for n in q.read if n in arrays}
        out: dict = {}
        for name, t in targets.items():
            if np.issubdtype(t.dtype, np.integer) and t.ndim == 1:
                r = self._accuracy(net, query, inputs, name, t, batch_size, carry)
                out[f"{name}_accuracy"] = r["accuracy"]
                out.setdefault("accuracy", r["accuracy"])
            else:
                r = self._read_mse(net, query, inputs, name, t, batch_size, carry)
                out[f"{name}_mse"] = r["mse"]
                out.setdefault("mse", r["mse"])
            out["n"] = r["n"]
        if not targets:
            if len(q.clamp) == 1 and net.plan.parents_of[q.clamp[0]]:
                return self._recon(net, query, inputs, q.clamp[0], batch_size, carry)
            raise ValueError(f"evaluation data gives no targets for the read nodes of query "
                             f"{query!r} ({', '.join(q.read) or 'none'})")
        return out

    def _accuracy(self, net, query, inputs, label, y, batch_size, carry) -> dict:
        fn = self.step(net, query)
        correct = n = 0
        for batch, mask in eval_batches({**inputs, "__y": np.asarray(y)}, batch_size):
            yb = batch.pop("__y")
            pred = np.argmax(np.asarray(fn(net, batch, None, carry)[label]).reshape(len(yb), -1),
                             axis=-1)
            correct += int(np.sum((pred == yb) & mask))
            n += int(mask.sum())
        return {"accuracy": correct / max(n, 1), "n": n}

    def _read_mse(self, net, query, inputs, name, t, batch_size, carry) -> dict:
        """Mean over examples of the read-out's MSE; for a node the query clamps ``where`` a
        mask, the MSE over its missing elements (all examples' missing elements pooled)."""
        fn = self.step(net, query)
        mname = dict(net.plan.query(query).partial).get(name)
        tot, n, cnt = 0.0, 0, 0.0
        for batch, mask in eval_batches({**inputs, "__t": np.asarray(t)}, batch_size):
            tb = batch.pop("__t")
            out = np.asarray(fn(net, batch, None, carry)[name])
            sq = ((out - tb) ** 2).reshape(len(tb), -1)
            if mname is not None:
                miss = (1 - np.asarray(batch[mname], sq.dtype).reshape(len(tb), -1)) * mask[:, None]
                tot, cnt = tot + float(np.sum(sq * miss)), cnt + float(np.sum(miss))
            else:
                tot += float(np.sum(sq.mean(-1) * mask))
            n += int(mask.sum())
        return {"mse": tot / max(cnt if mname is not None else n, 1), "n": n}

    def _recon(self, net, query, inputs, node, batch_size, carry) -> dict:
        fn = self.step(net, query, reconstruct=node)
        tot, etot, n = 0.0, 0.0, 0
        for batch, mask in eval_batches(inputs, batch_size):
            out = fn(net, batch, None, carry)
            tot += float(np.sum(np.asarray(out["sq_err"]) * mask))
            etot += float(out["energy"]) * int(mask.sum())  # padded rows: approximate
            n += int(mask.sum())
        return {"mse": tot / max(n, 1), "energy": etot / max(n, 1), "n": n}


def evaluate(
    net: Network,
    data,
    *,
    query: str = "test",
    batch_size: int = EVAL_BATCH_SIZE,
    split: str = "test",
    inference: Inference | None = None,
    init: Initialisation | None = None,
    train_query: str = "train",
    max_examples: int | None = None,
    carry: Any = None,
    mesh: Any = None,
) -> dict:
    """Evaluate ``net`` on ``data`` (a ``Dataset``: its ``split`` = test | val | train; or a
    ``{node: array}`` dict of the test query's clamped nodes plus targets for read nodes).

    Classifier: ``{"accuracy", "n", "query"}`` — argmax of the read-out label node (never
    clamped) vs the labels. Generative (no label node): ``{"mse", "energy", "n", "query"}`` — the
    reconstruction MSE of the data node (its prediction from the relaxed latents; a model without
    ``query`` uses its training query, which clamps only the data). Dict data: ``accuracy`` for
    integer targets, ``mse`` for array targets, per read node ``{node}_accuracy``/``{node}_mse``.
    Every example counts once (last batch padded and masked).

    ``inference`` / ``init``: default the model's settings. ``carry``: the training run's
    initialiser state (``FitResult.state.carry``), needed where the evaluation query initialises
    nodes with ``mem``, ``amortised`` or ``null``. Compiles on every call: to evaluate repeatedly,
    keep an :class:`Evaluator`. ``mesh``: split each batch over its devices (docs/scaling.md)."""
    if inference is None:
        inference = resolve_config(net.plan.settings).inference
    ev = Evaluator(inference, Initialisation() if init is None else init, mesh)
    return ev(net, data, query=query, split=split, batch_size=batch_size,
              train_query=train_query, max_examples=max_examples, carry=carry)


def eval_init(net: Network, test_query: str, init: Initialisation) -> Initialisation:
    """The initialisation used at evaluation for a training ``init``: seed 004 tests ``avg`` and
    ``null`` with the forward pass, so where Prop. 3.2 allows it the evaluation uses the model's
    setting (``auto`` = forward) instead; elsewhere ``init`` itself (avg becomes forward where
    possible, null reads the last training batch)."""
    if init.method not in ("avg", "null"):
        return init
    if test_query in net.plan.forward_queries:
        return init.replace(method=None)
    return init


# ------------------------------------------------------------------------------ per-node trace
def make_tracer(net: Network, query: str, inference: GradientDescent, init: Initialisation):
    """``tracer(net, batch, carry=None) -> {node: [E_v at t = 0..T]}``: the per-node energy at
    every gradient-descent inference step of one batch, for plots (``pcgraph plot``) and
    divergence reports. A separate jitted function, compiled once per tracer."""
    q = compile_query(net, query)
    initer = make_initialiser(net, q, init)
    T = int(inference.steps)

    def trace(net_, batch_, carry_):
        h = clamp_data(net_, q, batch_)
        obs = observed_masks(net_, q, batch_, h[0].dtype)  # None without partial observations
        h0 = impose_observed(q, initer(net_, h, carry_), h, obs)
        e0 = node_energies(net_, h0, q, obs)
        if T == 0 or not q.free_groups:
            return jax.tree_util.tree_map(lambda v: v[None], e0)
        res = infer(net_, q, h0, GradientDescent(T, inference.optimizer), record=True,
                    observed=obs)
        es = jax.lax.map(lambda free: node_energies(net_, merge_free(h0, q, free), q, obs),
                         res.trajectory)
        return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), e0, es)

    jitted = eqx.filter_jit(trace)

    def tracer(net_, batch, carry=None) -> dict[str, list[float]]:
        out = jax.device_get(jitted(net_, dict(batch), carry))
        return {k: [float(v) for v in np.asarray(a)] for k, a in out.items()}

    return tracer


def inference_trace(net: Network, batch: Mapping[str, Any], *, query: str = "train",
                    inference: GradientDescent | None = None, init: Initialisation | None = None,
                    carry: Any = None) -> dict[str, list[float]]:
    """Per-node energy ``E_v`` at every inference step ``t = 0..T`` for one batch (gradient
    descent; default the model's settings). ``carry``: the initialiser state."""
    if inference is None:
        inference = resolve_config(net.plan.settings).inference
    return make_tracer(net, query, inference, Initialisation() if init is None else init)(
        net, batch, carry)

