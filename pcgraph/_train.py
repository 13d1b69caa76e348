"""The Python training API over the engine: :func:`fit` and :func:`evaluate`.

``fit`` runs a Python loop over batches and calls ONE jitted step per batch (``_learn``'s
``make_train_step``): shapes are static (the ragged last training batch is dropped), so the step is
traced once. Batch order is a permutation drawn from ``(seed, epoch)`` and every step's PRNG key is
``fold_in(fold_in(key(seed), epoch), batch)``, so a run resumed from a checkpoint (``state=``) ends
with exactly the parameters of an uninterrupted run.

Data binding (a :class:`pcgraph.data.Dataset`): the *input* is the node clamped in both the training
and the test query (a generative model: the only node the training query clamps); the *label* node
is the one clamped in training but not at test (integer labels, one-hot encoded). Shapes are checked
before anything is compiled (``data.check_shape``), with an error naming the node and both shapes. A
plain ``{node: array}`` dict binds arrays to nodes directly (all arrays of one length).

Evaluation never clamps the label: the test query clamps the input, the label node is read (after
inference where the forward pass is not the equilibrium) and accuracy is the argmax against the
labels, over every test example (the last batch is padded and masked). A generative model reports
the reconstruction MSE of its data node (its prediction from the relaxed latents vs the data).

Per epoch (``FitResult.history``): ``energy`` (mean F at t = 0), ``energy_end`` (mean relaxed F),
``train_loss`` (mean output loss at t = 0; for forward initialisation the network's cross-entropy),
``train_accuracy`` (test query on at most ``train_eval_max`` training examples), ``test_accuracy``
(or ``test_mse`` for generative models), ``smm_per_update``, ``total_smm``, ``ms_per_step``,
``epoch_time_s``, ``wall_time_s``. SMM (seed 004 eq. 5-6): PC ``2T`` + the initialisation's longest
matmul chain (``L`` for a forward pass), iPC the same per batch divided by its ``T`` updates, BP
``2L − 1`` (``L`` the longest path).

The activity initialisation's state (``null``, ``avg``, ``mem``, ``amortised``: see ``_init``) is
``TrainState.carry``: threaded through the jitted step, used by the per-epoch evaluation (memory
retrieval at test), checkpointed. ``avg`` trains on class-balanced batches.

A non-finite energy or loss stops training with :class:`TrainingDiverged`, naming the step and the
nodes whose energy is non-finite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import data as _data
from ._ir import ModelIR, SettingsIR
from ._network import Network

ALGORITHMS = ("pc", "ipc", "bp")
DEFAULT_EPOCHS = 10
DEFAULT_BATCH_SIZE = 64
DEFAULT_EVAL_BATCH = 256


# ------------------------------------------------------------------------------ errors / state
class TrainingDiverged(RuntimeError):
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


class BindingError(ValueError):
    """The data cannot be bound to the model's nodes (which node gets what is ambiguous)."""


@dataclass
class TrainState:
    """What a training run carries between epochs besides the network (checkpointed).

    ``opt_state`` (optax state of the weights) and ``carry`` (initialiser state carried between
    batches, or None) are pytrees; the counters are plain ints. ``epoch`` counts finished epochs."""

    opt_state: Any
    carry: Any = None
    epoch: int = 0
    step: int = 0
    wall_time_s: float = 0.0
    history: list = field(default_factory=list)

    def meta(self) -> dict:
        """The JSON part (counters and history) for a checkpoint."""
        return {"epoch": self.epoch, "step": self.step, "wall_time_s": self.wall_time_s,
                "history": list(self.history)}

    @classmethod
    def from_meta(cls, opt_state, carry, meta: Mapping) -> "TrainState":
        return cls(opt_state=opt_state, carry=carry, epoch=int(meta.get("epoch", 0)),
                   step=int(meta.get("step", 0)), wall_time_s=float(meta.get("wall_time_s", 0.0)),
                   history=list(meta.get("history", [])))


@dataclass
class FitResult:
    net: Network
    state: TrainState
    history: list  # per-epoch metric dicts (all epochs, resumed ones included)
    config: dict  # the resolved hyperparameters
    smm_per_update: float
    smm_per_batch: int
    steps_per_epoch: int
    traces: int = 0  # how often the training step was traced (1: no retracing)

    @property
    def opt_state(self):
        return self.state.opt_state

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


# ------------------------------------------------------------------------------ settings
def resolve_config(net: Network, *, steps=None, activity_lr=None, weight_lr=None,
                   weight_optimizer=None, init=None, solver=None, algorithm="pc",
                   epochs=None, batch_size=None) -> dict:
    """The model settings with the given overrides applied (None keeps the setting)."""
    s = dict(net.plan.settings.as_dict())
    over = {"steps": steps, "activity_lr": activity_lr, "weight_lr": weight_lr,
            "init": init, "solver": solver}
    if isinstance(weight_optimizer, str):
        over["weight_optimizer"] = weight_optimizer
    for k, v in over.items():
        if v is not None:
            s[k] = v
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    s["algorithm"] = algorithm
    s["epochs"] = int(epochs if epochs is not None else s.get("epochs") or DEFAULT_EPOCHS)
    s["batch_size"] = int(batch_size if batch_size is not None
                          else s.get("batch_size") or DEFAULT_BATCH_SIZE)
    return s


def make_optimizer(config: Mapping, weight_optimizer=None) -> optax.GradientTransformation:
    """The weight optimiser of a resolved config (or ``weight_optimizer`` if it is optax)."""
    if isinstance(weight_optimizer, optax.GradientTransformation):
        return weight_optimizer
    from ._learn import weight_optimizer_from_settings

    keys = ("weight_optimizer", "weight_lr", "weight_decay")
    return weight_optimizer_from_settings(SettingsIR(tuple((k, config[k]) for k in keys)))


def model_hash(model: ModelIR | None) -> str:
    """sha256 of the model's canonical text (comments and layout do not matter)."""
    if model is None:
        return ""
    try:
        from ._format import format_model

        text = format_model(model)
    except Exception:  # noqa: BLE001 - formatter missing or failing: fall back to the IR repr
        text = repr(model)
    return hashlib.sha256(text.encode()).hexdigest()


# ------------------------------------------------------------------------------ data binding
@dataclass(frozen=True)
class Binding:
    """Which node gets the inputs and which the labels, for a train and a test query."""

    input: str
    label: str | None
    train_query: str
    test_query: str | None

    @property
    def generative(self) -> bool:
        return self.label is None


def _model(net: Network) -> ModelIR:
    if net.model is None:
        raise ValueError("the network carries no model (build it with pcgraph's build(model))")
    return net.model


def bind(net: Network, query: str = "train", test_query: str | None = "test") -> Binding:
    """Find the input and label nodes from the training and test queries (see module doc)."""
    m = _model(net)
    qt = m.query(query)
    names = {q.name for q in m.queries}
    qe = m.query(test_query) if test_query and test_query in names else None
    if qe is not None:
        inputs = [n for n in qt.clamp if n in qe.clamp]
        labels = [n for n in qt.clamp if n not in qe.clamp]
    else:
        inputs, labels = list(qt.clamp), []
    if len(inputs) != 1 or len(labels) > 1:
        raise BindingError(
            f"cannot bind a data set to model {m.name!r}: query {qt.name!r} clamps "
            f"{', '.join(qt.clamp) or 'nothing'}"
            + (f" and query {qe.name!r} clamps {', '.join(qe.clamp) or 'nothing'}" if qe else "")
            + "; a data set needs exactly one input node (clamped in both) and at most one label "
            "node (clamped in training, read at test). Pass a {node: array} dict instead.")
    return Binding(inputs[0], labels[0] if labels else None, qt.name,
                   qe.name if qe is not None else None)


def prepare_dataset(net: Network, ds: "_data.Dataset", binding: Binding) -> "_data.Dataset":
    """Check (and fit the layout of) the data set against the bound nodes; before compiling."""
    ds = _data.check_shape(ds, binding.input, net.node_shape(binding.input), "input")
    if binding.label is not None:
        _data.check_shape(ds, binding.label, net.node_shape(binding.label), "target")
    return ds


def _check_dict(net: Network, arrays: Mapping[str, Any], what: str = "data") -> dict:
    names = set(net.plan.node_names)
    out = {}
    n = None
    for k, v in arrays.items():
        if k not in names:
            from ._diagnostics import did_you_mean

            hint = did_you_mean(k, names)
            raise _data.DataShapeError(f"{what} names unknown node {k!r}"
                                       + (f"; {hint}" if hint else ""))
        a = np.asarray(v)
        shape = tuple(net.node_shape(k))
        ok = tuple(a.shape[1:]) == shape or (
            a.ndim == 1 and len(shape) == 1 and np.issubdtype(a.dtype, np.integer))
        if not ok:
            raise _data.DataShapeError(f"node '{k}' has shape {shape} but the {what} for it has "
                                       f"per-sample shape {tuple(a.shape[1:])}")
        if n is not None and len(a) != n:
            raise _data.DataShapeError(f"{what}: arrays have different lengths ({n} and {len(a)})")
        n = len(a)
        out[k] = a
    return out


def _batches_dict(arrays: Mapping[str, np.ndarray], batch_size: int, *, seed: int, epoch: int):
    n = len(next(iter(arrays.values())))
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} is larger than the {n} training examples")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    for i in range(0, n - n % batch_size, batch_size):
        idx = perm[i:i + batch_size]
        yield {k: a[idx] for k, a in arrays.items()}


# ------------------------------------------------------------------------------ SMM
def smm_counts(net: Network, query: str, algorithm: str, steps: int, init: str | None,
               init_overrides: Mapping[str, str] | None = None,
               init_options: Mapping[str, Any] | None = None) -> tuple[int, float]:
    """(SMMs per batch, SMMs per weight update) of seed 004 eq. 5-6: PC ``2T`` + the
    initialisation's longest matmul chain (``L`` for a forward pass, 2 for a memory retrieval),
    iPC the same divided by its ``T`` updates, BP ``2L − 1``."""
    from ._feasibility import analyse
    from ._initializers import smm_bp, smm_pc

    m = _model(net)
    if algorithm == "bp":
        L = analyse(m).longest_path or 1
        v = smm_bp(L)
        return v, float(v)
    from ._init import make_initialiser
    from ._network import compile_query

    q = compile_query(net, query)
    init_cost = make_initialiser(net, q, default=init, overrides=init_overrides,
                                 options=init_options).smm
    per_batch = smm_pc(steps, init_cost)
    if algorithm == "ipc":
        return per_batch, per_batch / max(steps, 1)
    return per_batch, float(per_batch)


# ------------------------------------------------------------------------------ evaluation
_EVAL_CACHE: dict = {}


def _eval_fn(net: Network, query: str, *, steps, activity_lr, init, solver, kind: str,
             recon_node: str | None = None, init_options=None, init_overrides=None, carry=None):
    """A cached jitted evaluation function ``fn(net, batch, key, carry)`` per (network plan, query,
    options); ``carry`` is not part of the key (an argument of the call)."""
    from ._init import _freeze

    # the model is part of the key: plans compare equal across models whose settings/queries differ
    key = (net.plan, net.model, query, steps, activity_lr, init, solver, kind, recon_node,
           _freeze(init_options), _freeze(init_overrides))
    fn = _EVAL_CACHE.get(key)
    if fn is not None:
        return fn
    if kind == "read":
        from ._learn import make_eval_step

        fn = make_eval_step(net, query, steps=steps, activity_lr=activity_lr, init=init,
                            solver=solver, init_options=init_options,
                            init_overrides=init_overrides)
    else:  # reconstruction of a clamped data node from the relaxed activities
        from ._energy import energy, node_prediction
        from ._infer import clamp_data, run_inference
        from ._init import make_initialiser
        from ._learn import resolve_inference
        from ._network import compile_query

        q = compile_query(net, query)
        initer = make_initialiser(net, q, default=init, overrides=init_overrides,
                                  options=init_options, train=False)
        T, lr, aopt, _, sol = resolve_inference(net, steps, activity_lr, None, init, solver)

        def recon(net_, batch, key=None, carry=None):
            h = clamp_data(net_, q, batch)
            h0 = initer(net_, h, carry, key)
            res = run_inference(net_, q, h0, solver=sol, steps=T, lr=lr, optimizer=aopt)
            x = net_.get(h, recon_node)
            mu = node_prediction(net_, res.h, recon_node)
            err = jnp.mean(((x - mu) ** 2).reshape(x.shape[0], -1), axis=-1)
            return {"sq_err": err, "energy": energy(net_, res.h, q)}

        jitted = eqx.filter_jit(recon)

        def fn(net_, batch, key=None, carry=None):
            if carry is None and initer.stateful:
                initer._need_state(None, ", ".join(m for m in ("null", "mem", "amortised")
                                                   if initer.uses(m)))
            return jitted(net_, batch, key, carry)
    if len(_EVAL_CACHE) > 64:
        _EVAL_CACHE.clear()
    _EVAL_CACHE[key] = fn
    return fn


def evaluate(
    net: Network,
    data,
    *,
    query: str = "test",
    batch_size: int = DEFAULT_EVAL_BATCH,
    split: str = "test",
    steps: int | None = None,
    activity_lr: float | None = None,
    init: str | None = None,
    solver: str | None = None,
    train_query: str = "train",
    max_examples: int | None = None,
    carry: Any = None,
    init_options: Mapping[str, Any] | None = None,
    init_overrides: Mapping[str, str] | None = None,
) -> dict:
    """Evaluate ``net`` on ``data`` (a ``Dataset``: its ``split`` = test | val | train; or a
    ``{node: array}`` dict of the test query's clamped nodes plus targets for read nodes).

    Classifier: ``{"accuracy", "n", "query"}`` — argmax of the read-out label node (never
    clamped) vs the labels. Generative (no label node): ``{"mse", "energy", "n", "query"}`` — the
    reconstruction MSE of the data node (its prediction from the relaxed latents; a model without
    ``query`` uses its training query, which clamps only the data). Dict data: ``accuracy`` for
    integer targets, ``mse`` for array targets, per read node ``{node}_accuracy``/``{node}_mse``.
    Every example counts once (last batch padded and masked).

    ``carry``: the training run's initialiser state (``FitResult.state.carry``), needed where the
    evaluation query initialises nodes with ``mem``, ``amortised`` or ``null``."""
    m = _model(net)
    iopts = dict(carry=carry, init_options=init_options, init_overrides=init_overrides)
    qnames = {q.name for q in m.queries}
    if isinstance(data, _data.Dataset):
        binding = bind(net, train_query, query)
        ds = prepare_dataset(net, data, binding)
        x = getattr(ds, f"x_{split}")
        y = getattr(ds, f"y_{split}")
        if x is None:
            raise ValueError(f"data set {ds.name} has no {split} split")
        if max_examples is not None and len(x) > max_examples:
            x, y = x[:max_examples], y[:max_examples]
        if binding.generative:
            q = query if query in qnames else binding.train_query
            out = _eval_recon(net, q, {binding.input: x}, binding.input, batch_size,
                              steps=steps, activity_lr=activity_lr, init=init, solver=solver, **iopts)
            return {**out, "query": q}
        out = _eval_accuracy(net, query, {binding.input: x}, binding.label, y, batch_size,
                             steps=steps, activity_lr=activity_lr, init=init, solver=solver, **iopts)
        return {**out, "query": query}
    # dict data
    if query not in qnames:
        raise KeyError(f"model {m.name!r} has no query {query!r}")
    arrays = _check_dict(net, data, "evaluation data")
    q = m.query(query)
    missing = [n for n in q.clamp if n not in arrays]
    if missing:
        raise _data.DataShapeError(f"query {query!r} clamps {', '.join(missing)} but the data "
                                   "has no array for it")
    inputs = {n: arrays[n] for n in q.clamp}
    targets = {n: arrays[n] for n in q.read if n in arrays}
    out: dict = {}
    for name, t in targets.items():
        if np.issubdtype(t.dtype, np.integer) and t.ndim == 1:
            r = _eval_accuracy(net, query, inputs, name, t, batch_size, steps=steps,
                               activity_lr=activity_lr, init=init, solver=solver, **iopts)
            out[f"{name}_accuracy"] = r["accuracy"]
            out.setdefault("accuracy", r["accuracy"])
        else:
            r = _eval_read_mse(net, query, inputs, name, t, batch_size, steps=steps,
                               activity_lr=activity_lr, init=init, solver=solver, **iopts)
            out[f"{name}_mse"] = r["mse"]
            out.setdefault("mse", r["mse"])
        out["n"] = r["n"]
    if not targets:
        if len(q.clamp) == 1 and m.node(q.clamp[0]) is not None and net.plan.parents_of[q.clamp[0]]:
            return _eval_recon(net, query, inputs, q.clamp[0], batch_size, steps=steps,
                               activity_lr=activity_lr, init=init, solver=solver, **iopts)
        raise ValueError(f"evaluation data gives no targets for the read nodes of query "
                         f"{query!r} ({', '.join(q.read) or 'none'})")
    return out


def _eval_batches(arrays: Mapping[str, np.ndarray], batch_size: int):
    n = len(next(iter(arrays.values())))
    bs = max(1, min(batch_size, n))
    for i in range(0, n, bs):
        out = {}
        m = min(bs, n - i)
        for k, a in arrays.items():
            b = a[i:i + bs]
            if m < bs:
                b = np.concatenate([b, np.zeros((bs - m,) + b.shape[1:], b.dtype)])
            out[k] = b
        yield out, np.arange(bs) < m


def _eval_accuracy(net, query, inputs, label, y, batch_size, **opts) -> dict:
    fn = _eval_fn(net, query, kind="read", **opts)
    correct = 0
    n = 0
    y = np.asarray(y)
    for batch, mask in _eval_batches({**inputs, "__y": y}, batch_size):
        yb = batch.pop("__y")
        out = fn(net, batch, None, opts.get("carry"))
        pred = np.argmax(np.asarray(out[label]).reshape(len(yb), -1), axis=-1)
        correct += int(np.sum((pred == yb) & mask))
        n += int(mask.sum())
    return {"accuracy": correct / max(n, 1), "n": n}


def _eval_read_mse(net, query, inputs, name, t, batch_size, **opts) -> dict:
    fn = _eval_fn(net, query, kind="read", **opts)
    tot, n = 0.0, 0
    for batch, mask in _eval_batches({**inputs, "__t": np.asarray(t)}, batch_size):
        tb = batch.pop("__t")
        out = np.asarray(fn(net, batch, None, opts.get("carry"))[name])
        err = ((out - tb) ** 2).reshape(len(tb), -1).mean(-1)
        tot += float(np.sum(err * mask))
        n += int(mask.sum())
    return {"mse": tot / max(n, 1), "n": n}


def _eval_recon(net, query, inputs, node, batch_size, **opts) -> dict:
    fn = _eval_fn(net, query, kind="recon", recon_node=node, **opts)
    tot, etot, n = 0.0, 0.0, 0
    for batch, mask in _eval_batches(inputs, batch_size):
        out = fn(net, batch, None, opts.get("carry"))
        err = np.asarray(out["sq_err"])
        tot += float(np.sum(err * mask))
        etot += float(out["energy"]) * int(mask.sum())  # padded rows: approximate
        n += int(mask.sum())
    return {"mse": tot / max(n, 1), "energy": etot / max(n, 1), "n": n}


# ------------------------------------------------------------------------------ per-node trace
def inference_trace(net: Network, batch: Mapping[str, Any], *, query: str = "train",
                    steps: int | None = None, activity_lr: float | None = None,
                    init: str | None = None, carry: Any = None,
                    init_options: Mapping[str, Any] | None = None,
                    init_overrides: Mapping[str, str] | None = None) -> dict[str, list[float]]:
    """Per-node energy ``E_v`` at every inference step ``t = 0..T`` for one batch (GD solver),
    for plots (``pcgraph plot``). Not on the hot path: a separate jitted function, cached.
    ``carry``: the initialiser state (stateful methods)."""
    from ._init import _freeze

    key = (net.plan, net.model, query, steps, activity_lr, init, "trace", _freeze(init_options),
           _freeze(init_overrides))
    fn = _EVAL_CACHE.get(key)
    if fn is None:
        from ._energy import node_energies
        from ._infer import _merge, clamp_data, infer
        from ._init import make_initialiser
        from ._learn import resolve_inference
        from ._network import compile_query

        q = compile_query(net, query)
        initer = make_initialiser(net, q, default=init, overrides=init_overrides,
                                  options=init_options)
        T, lr, aopt, _, _ = resolve_inference(net, steps, activity_lr, None, init, None)

        def trace(net_, batch_, carry_):
            h = clamp_data(net_, q, batch_)
            h0 = initer(net_, h, carry_)
            e0 = node_energies(net_, h0, q)
            if T == 0 or not q.free_groups:
                return jax.tree_util.tree_map(lambda v: v[None], e0)
            res = infer(net_, q, h0, steps=T, lr=lr, optimizer=aopt, record_activities=True)

            def at(free):
                return node_energies(net_, _merge(h0, q, free), q)

            es = jax.lax.map(at, res.trajectory)
            return jax.tree_util.tree_map(lambda a, b: jnp.concatenate([a[None], b]), e0, es)

        fn = eqx.filter_jit(trace)
        _EVAL_CACHE[key] = fn
    out = jax.device_get(fn(net, dict(batch), carry))
    return {k: [float(v) for v in np.asarray(a)] for k, a in out.items()}


# ------------------------------------------------------------------------------ fit
@jax.jit
def _finite_groups(params):
    return tuple(
        jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree_util.tree_leaves(p)]))
        if jax.tree_util.tree_leaves(p) else jnp.asarray(True)
        for p in params
    )


def _nonfinite_params(net: Network) -> list[str]:
    """Names of the terms whose parameters hold a NaN/inf (one small jitted reduction)."""
    flags = jax.device_get(_finite_groups(net.params))
    bad = []
    for ok, tg in zip(flags, net.plan.terms):
        if not bool(ok):
            bad.extend(tg.names)
    return bad


def fit(
    net: Network,
    data,
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    query: str = "train",
    test_query: str = "test",
    steps: int | None = None,
    activity_lr: float | None = None,
    weight_lr: float | None = None,
    weight_optimizer: str | optax.GradientTransformation | None = None,
    init: str | None = None,
    init_overrides: Mapping[str, str] | None = None,
    init_options: Mapping[str, Any] | None = None,
    solver: str | None = None,
    algorithm: str = "pc",
    seed: int = 0,
    eval_data: Any = None,
    callback: Callable[[dict], Any] | None = None,
    state: TrainState | None = None,
    eval_batch_size: int = DEFAULT_EVAL_BATCH,
    train_eval_max: int = 2048,
    check_every: int = 10,
    trace_inference: bool = True,
) -> FitResult:
    """Train ``net`` on ``data`` for ``epochs`` epochs (the total: a resumed ``state`` continues
    from ``state.epoch``). Unset hyperparameters come from the model's settings.

    ``data``: a ``Dataset`` (train split used; its test split is evaluated each epoch unless
    ``eval_data=False``) or a ``{node: array}`` dict. ``eval_data``: a ``Dataset``/dict to evaluate
    on each epoch (default: the data set itself), or False. ``callback(event)`` is called with
    ``{"kind": "start" | "step" | "epoch" | "end", ...}``: step events carry ``epoch``, ``batch``,
    ``steps_per_epoch``, ``step``, ``energy``, ``loss`` (delivered in bursts of ``check_every``);
    epoch events carry ``metrics``, ``net`` and ``state`` (to checkpoint); a callback returning
    False at an epoch event stops training after that epoch.

    ``init`` (a method for every free node), ``init_overrides`` (``{node: method}``) and
    ``init_options`` (see ``pcgraph._init``) choose the activity initialisation; the state it
    carries between batches (memories, class means, previous activities, amortiser) is
    ``state.carry``, checkpointed with the rest. ``avg`` trains on class-balanced batches.

    Raises :class:`TrainingDiverged` when the energy/loss becomes non-finite,
    ``data.DataShapeError`` before compiling when the data does not fit the nodes."""
    from ._learn import make_train_step

    cfg = resolve_config(net, steps=steps, activity_lr=activity_lr, weight_lr=weight_lr,
                         weight_optimizer=weight_optimizer, init=init, solver=solver,
                         algorithm=algorithm, epochs=epochs, batch_size=batch_size)
    epochs, batch_size = cfg["epochs"], cfg["batch_size"]
    T = int(cfg["steps"])
    init_default = init  # None -> the model's (per node / per query) settings

    # ---- bind and check the data before compiling anything
    train_inputs: dict
    ds = None
    binding = None
    if isinstance(data, _data.Dataset):
        binding = bind(net, query, test_query)
        ds = prepare_dataset(net, data, binding)
        if batch_size > len(ds.x_train):
            raise ValueError(f"batch_size {batch_size} is larger than the {len(ds.x_train)} "
                             "training examples")
        train_arrays = None
        n_train = len(ds.x_train)
    elif isinstance(data, Mapping):
        train_arrays = _check_dict(net, data, "training data")
        qt = _model(net).query(query)
        missing = [n for n in qt.clamp if n not in train_arrays]
        if missing:
            raise _data.DataShapeError(f"query {query!r} clamps {', '.join(missing)} but the "
                                       "training data has no array for it")
        train_arrays = {n: train_arrays[n] for n in qt.clamp}
        n_train = len(next(iter(train_arrays.values())))
    else:
        raise TypeError(f"data must be a pcgraph.data.Dataset or a {{node: array}} dict, "
                        f"not {type(data).__name__}")
    steps_per_epoch = n_train // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {batch_size} is larger than the {n_train} training examples")
    if eval_data is None:
        eval_data = data if isinstance(data, _data.Dataset) else False

    optimizer = make_optimizer(cfg, weight_optimizer)
    init_kw = dict(init_overrides=dict(init_overrides or {}), init_options=dict(init_options or {}))
    step_fn = make_train_step(
        net, query, method=algorithm, weight_optimizer=optimizer, steps=T,
        activity_lr=float(cfg["activity_lr"]), init=init_default, solver=cfg["solver"],
        record_node_energies=algorithm != "bp", **init_kw,
    )
    if state is None:
        state = TrainState(opt_state=step_fn.optimizer.init(eqx.filter(net, eqx.is_inexact_array)),
                           carry=init_carry(step_fn, net, batch_size, seed))
    else:
        state = dataclasses.replace(state, history=list(state.history))
    balanced = step_fn.initialiser is not None and step_fn.initialiser.uses("avg")
    if balanced and ds is None:
        raise ValueError("init = avg trains on class-balanced batches: give a Dataset")
    smm_batch = step_fn.smm["smm_pc"] if algorithm != "bp" else step_fn.smm["smm_bp"]
    smm_update = float(step_fn.smm["smm_per_update"])
    cfg.update(smm_per_batch=smm_batch, smm_per_update=smm_update,
               steps_per_epoch=steps_per_epoch, seed=seed, query=query)
    base_key = jax.random.PRNGKey(seed)

    def emit(event):
        return callback(event) if callback is not None else None

    emit({"kind": "start", "epochs": epochs, "start_epoch": state.epoch,
          "steps_per_epoch": steps_per_epoch, "smm_per_update": smm_update, "config": cfg})

    def batch_iter(epoch0: int):
        if ds is not None:
            it = (_data.class_balanced_batches(ds.x_train, ds.y_train, batch_size, ds.n_classes,
                                               seed=seed, epoch=epoch0) if balanced else
                  _data.batches(ds.x_train, ds.y_train, batch_size, seed=seed, epoch=epoch0))
            for xb, yb in it:
                b = {binding.input: xb}
                if binding.label is not None:
                    b[binding.label] = ds.one_hot(yb)
                yield b
        else:
            yield from _batches_dict(train_arrays, batch_size, seed=seed, epoch=epoch0)

    first_call = True  # a new step function compiles on its first call
    trace_batch = None
    opt_state = state.opt_state
    carry = state.carry
    while state.epoch < epochs:
        epoch0 = state.epoch  # 0-based index of the epoch being run
        ekey = jax.random.fold_in(base_key, epoch0)
        t_epoch = time.perf_counter()
        compile_s = 0.0
        pending: list = []  # (global step, batch idx, metrics on device, batch, key)
        window = [net, opt_state, carry]  # network, optimiser, init state before pending steps
        sums = {"energy": 0.0, "energy_end": 0.0, "loss": 0.0}
        count = 0
        last_finite: dict = {}

        def net_before(j):
            """Replay the pending steps before entry ``j`` (deterministic) from the window."""
            n_, o_, c_ = window
            for _, _, _, b_, k_ in pending[:j]:
                n_, o_, _, c_ = _call(step_fn, n_, o_, b_, k_, c_)
            return n_, c_

        def flush():
            nonlocal count, last_finite
            if not pending:
                return
            fetched = jax.device_get([p[2] for p in pending])
            for j, ((gstep, bi, _, b_, _), met) in enumerate(zip(pending, fetched)):
                e0 = float(met["energy_start"])
                e1 = float(met["energy_end"])
                lo = float(met["loss"])
                ne = {k: float(v) for k, v in (met.get("node_energies") or {}).items()}
                if not all(math.isfinite(v) for v in (e0, e1, lo)):
                    trace = None
                    if algorithm != "bp" and cfg["solver"] == "gd":
                        try:
                            n_, c_ = net_before(j)
                            trace = inference_trace(
                                n_, b_, query=query, steps=T, carry=c_,
                                activity_lr=float(cfg["activity_lr"]), init=init_default,
                                **init_kw)
                        except Exception:  # noqa: BLE001 - diagnosis only
                            trace = None
                    _diverged(gstep, epoch0 + 1, bi + 1, e0, e1, lo, ne, last_finite, trace)
                last_finite = ne or last_finite
                sums["energy"] += e0
                sums["energy_end"] += e1
                sums["loss"] += lo
                count += 1
                emit({"kind": "step", "epoch": epoch0 + 1, "batch": bi + 1,
                      "steps_per_epoch": steps_per_epoch, "step": gstep, "energy": e0,
                      "energy_end": e1, "loss": lo})
            pending.clear()
            window[0], window[1], window[2] = net, opt_state, carry

        for bi, batch in enumerate(batch_iter(epoch0)):
            if trace_batch is None:
                trace_batch = batch
            key = jax.random.fold_in(ekey, bi)
            if first_call:
                t0 = time.perf_counter()
                net, opt_state, met, carry = _call(step_fn, net, opt_state, batch, key, carry)
                jax.block_until_ready(met)
                compile_s = time.perf_counter() - t0
                first_call = False
            else:
                net, opt_state, met, carry = _call(step_fn, net, opt_state, batch, key, carry)
            state.step += 1
            pending.append((state.step, bi, met, batch, key))
            if len(pending) >= check_every:
                flush()
        flush()
        jax.block_until_ready(net)
        train_time = time.perf_counter() - t_epoch
        bad = _nonfinite_params(net)
        if bad:
            raise TrainingDiverged(
                f"training diverged at step {state.step} (epoch {epoch0 + 1}): the weight update "
                f"made the parameters of {', '.join(bad[:8])} non-finite; lower the weight "
                "learning rate", step=state.step, epoch=epoch0 + 1, batch=steps_per_epoch,
                nodes=(), node_energies=last_finite)
        timed_steps = steps_per_epoch - (1 if compile_s else 0)
        ms_per_step = 1000.0 * (train_time - compile_s) / max(timed_steps, 1)

        # ---- evaluation (not counted in the training time)
        metrics: dict = {
            "type": "epoch", "epoch": epoch0 + 1, "step": state.step,
            "energy": sums["energy"] / max(count, 1),
            "energy_end": sums["energy_end"] / max(count, 1),
            "train_loss": sums["loss"] / max(count, 1),
            "train_accuracy": None, "test_accuracy": None,
            "smm_per_update": smm_update, "total_smm": smm_batch * state.step,
            "ms_per_step": ms_per_step, "compile_time_s": compile_s or None,
            "epoch_time_s": train_time,
        }
        state.wall_time_s += train_time
        metrics["wall_time_s"] = state.wall_time_s
        ev_opts = dict(steps=T, activity_lr=float(cfg["activity_lr"]), solver=cfg["solver"],
                       init=eval_init(net, test_query, init_default), carry=carry, **init_kw)
        if ds is not None and binding is not None:
            ev = evaluate(net, ds, query=test_query, batch_size=eval_batch_size, split="train",
                          train_query=query, max_examples=train_eval_max, **ev_opts)
            if binding.generative:
                metrics["train_mse"] = ev.get("mse")
            else:
                metrics["train_accuracy"] = ev.get("accuracy")
        if eval_data is not False and eval_data is not None:
            if isinstance(eval_data, _data.Dataset):
                ev = evaluate(net, eval_data, query=test_query, batch_size=eval_batch_size,
                              train_query=query, **ev_opts)
            else:
                ev = evaluate(net, eval_data, query=test_query, batch_size=eval_batch_size,
                              **ev_opts)
            if "accuracy" in ev:
                metrics["test_accuracy"] = ev["accuracy"]
            if "mse" in ev:
                metrics["test_mse"] = ev["mse"]
        state.epoch += 1
        state.opt_state = opt_state
        state.carry = carry
        state.history.append(metrics)
        trace = None
        if trace_inference and algorithm != "bp" and cfg["solver"] == "gd" and trace_batch is not None:
            try:
                trace = inference_trace(net, trace_batch, query=query, steps=T, carry=carry,
                                        activity_lr=float(cfg["activity_lr"]), init=init_default,
                                        **init_kw)
            except Exception:  # noqa: BLE001 - a diagnostic only
                trace = None
        go_on = emit({"kind": "epoch", "epoch": state.epoch, "metrics": metrics, "net": net,
                      "state": state, "inference": trace})
        if go_on is False:
            break
    emit({"kind": "end", "net": net, "state": state})
    return FitResult(net=net, state=state, history=list(state.history), config=cfg,
                     smm_per_update=smm_update, smm_per_batch=smm_batch,
                     steps_per_epoch=steps_per_epoch, traces=step_fn.traces)


def _call(step_fn, net, opt_state, batch, key, carry):
    """One step, always ``(net, opt_state, metrics, carry)``."""
    if carry is None:
        net, opt_state, met = step_fn(net, opt_state, batch, key)
        return net, opt_state, met, None
    return step_fn(net, opt_state, batch, key, carry=carry)


def carry_key(seed: int):
    """The PRNG key of the initialiser state's parameters (memories, amortiser) for ``seed``."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), 0x1417)


def init_carry(step_fn, net: Network, batch_size: int, seed: int):
    """A fresh initialiser state of a training step (None when its methods need none)."""
    return step_fn.init_carry(net, batch_size, carry_key(seed))


def fresh_carry(net: Network, *, query: str = "train", init: str | None = None,
                init_overrides: Mapping[str, str] | None = None,
                init_options: Mapping[str, Any] | None = None, batch_size: int,
                seed: int, algorithm: str = "pc"):
    """The initialiser state ``fit`` starts from (same shapes, same parameters) — also the
    structure to read a checkpoint's state into. None when the methods need no state."""
    if algorithm == "bp":
        return None
    from ._init import make_initialiser
    from ._network import compile_query

    initer = make_initialiser(net, compile_query(net, query), default=init,
                              overrides=init_overrides, options=init_options)
    return initer.init_state(net, batch_size, carry_key(seed))


def eval_init(net: Network, test_query: str, init: str | None) -> str | None:
    """The init method used at evaluation for a training ``init``: seed 004 tests ``avg`` and
    ``null`` with the forward pass, so where Prop. 3.2 allows it the evaluation uses the model's
    setting (``auto`` = forward) instead; elsewhere ``init`` itself (avg becomes forward where
    possible, null reads the last training batch)."""
    if init not in ("avg", "null"):
        return init
    from ._feasibility import query_feasibility

    m = _model(net)
    if test_query in {q.name for q in m.queries} and query_feasibility(m, test_query).feasible:
        return None
    return init


def _diverged(gstep, epoch, batch, e0, e1, lo, ne, last_finite, trace=None):
    what = ", ".join(f"{n} = {v}" for n, v in (("energy at t=0", e0), ("relaxed energy", e1),
                                                 ("output loss", lo)) if not math.isfinite(v))
    bad = [k for k, v in ne.items() if not math.isfinite(v)]
    where = ""
    if trace:
        T = max(len(v) for v in trace.values())
        first = next((t for t in range(T)
                      if any(not math.isfinite(v[t]) for v in trace.values() if t < len(v))), None)
        if first is not None:
            bad = [k for k, v in trace.items() if first < len(v) and not math.isfinite(v[first])]
            where = f"the energy of node(s) {', '.join(bad)} became non-finite first, at " \
                    f"inference step t={first}"
            if first > 0:
                prev = {k: v[first - 1] for k, v in trace.items() if first - 1 < len(v)}
                top = sorted(prev, key=lambda k: -abs(prev[k]) if math.isfinite(prev[k]) else 0)
                where += " (at t={}: {})".format(
                    first - 1, ", ".join(f"{k}={prev[k]:.3g}" for k in top[:4]))
    if not where:
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
