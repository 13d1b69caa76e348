"""The training loop: :func:`fit`.

``fit`` runs a Python loop over epochs and batches and calls ONE jitted step per batch
(``_learn.make_train_step``): shapes are static (the ragged last training batch is dropped), so the
step is traced once. Batch order is a permutation drawn from ``(seed, epoch)`` and every step's
PRNG key is ``fold_in(fold_in(key(seed), epoch), batch)``, so a run resumed from a checkpoint
(``state=``) ends with exactly the parameters of an uninterrupted run. Metrics are fetched from the
device every ``check_every`` steps (no host sync per step).

Per epoch (``FitResult.history``): ``energy`` (mean F at t = 0), ``energy_end`` (mean relaxed F),
``train_loss`` (mean output loss at t = 0; for forward initialisation the network's cross-entropy),
``train_accuracy`` (test query on at most ``train_eval_max`` training examples; 0: none), ``test_accuracy``
(or ``test_mse`` for generative models), ``smm_per_update``, ``total_smm`` (``_cost``),
``ms_per_step``, ``epoch_time_s``, ``wall_time_s``.

The activity initialisation's state (``null``, ``avg``, ``mem``, ``amortised``: see ``_init``) is
``TrainState.carry``: threaded through the jitted step, used by the per-epoch evaluation (memory
retrieval at test), checkpointed. ``avg`` trains on class-balanced batches.

A non-finite energy or loss stops training with :class:`TrainingDiverged` (``_divergence``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import numpy as np

from . import _limits
from . import data as _data
from ._binding import TrainData
from ._config import Config, GradientDescent, Initialisation, resolve_config
from ._divergence import EpochSteps, check_params
from ._evaluate import Evaluator, eval_init as _eval_init, make_tracer
from ._init import make_initialiser
from ._ir import ModelIR
from ._learn import TrainStep, make_train_step
from ._network import Network
from ._query import compile_query
from ._registry import DEFAULT_SETTINGS, EVAL_BATCH_SIZE
from ._validation import BestEpoch, split_validation, validation_metrics


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
    config: dict  # the resolved settings (Config.record) plus the run's SMM, seed and query
    smm_per_update: float
    smm_per_batch: int
    steps_per_epoch: int
    traces: int = 0  # how often the training step was traced (1: no retracing)
    best_epoch: int | None = None  # the epoch with the best validation metric (None: no val)
    best_net: Network | None = None  # its network (None when it was before a resume)
    best_state: TrainState | None = None

    @property
    def opt_state(self):
        return self.state.opt_state

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


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


def carry_key(seed: int):
    """The PRNG key of the initialiser state's parameters (memories, amortiser) for ``seed``."""
    return jax.random.fold_in(jax.random.PRNGKey(seed), 0x1417)


def fresh_carry(net: Network, *, query: str = "train", init: Initialisation | None = None,
                batch_size: int, seed: int, algorithm: str = "pc"):
    """The initialiser state ``fit`` starts from (same shapes, same parameters) — also the
    structure to read a checkpoint's state into. None when the methods need no state."""
    if algorithm == "bp":
        return None
    initer = make_initialiser(net, compile_query(net, query), init)
    return initer.init_state(net, batch_size, carry_key(seed))


def _config(net: Network, config: Config | None, settings: Mapping[str, Any]) -> Config:
    if config is None:
        return resolve_config(net.plan.settings, **settings)
    if settings:
        raise TypeError(f"fit: give a Config or settings ({', '.join(settings)}), not both")
    return config


def fit(
    net: Network,
    data,
    config: Config | None = None,
    *,
    query: str = "train",
    test_query: str = "test",
    seed: int = 0,
    eval_data: Any = None,
    callback: Callable[[dict], Any] | None = None,
    state: TrainState | None = None,
    eval_batch_size: int = EVAL_BATCH_SIZE,
    train_eval_max: int = 2048,
    check_every: int = 10,
    trace_inference: bool = True,
    mesh: Any = None,
    val_fraction: float | None = None,
    eval_init: Initialisation | None = None,
    **settings: Any,
) -> FitResult:
    """Train ``net`` on ``data`` for ``config.epochs`` epochs (the total: a resumed ``state``
    continues from ``state.epoch``).

    ``config``: a :class:`~pcgraph.Config` (inference, initialisation, weight optimiser,
    algorithm, epochs, batch size); without one, ``resolve_config(model settings, **settings)``
    (``settings``: ``steps=5``, ``epochs=2``, ``init="mem"``, ``algorithm="ipc"``, ...).

    ``data``: a ``Dataset`` (train split used; its test split is evaluated each epoch unless
    ``eval_data=False``) or a ``{node: array}`` dict. ``eval_data``: a ``Dataset``/dict to evaluate
    on each epoch (default: the data set itself), or False; ``train_eval_max``: how many training
    examples the per-epoch training accuracy uses (0: no training-set evaluation).
    ``callback(event)`` is called with ``{"kind": "start" | "step" | "epoch" | "end", ...}``:
    step events carry ``epoch``, ``batch``, ``steps_per_epoch``, ``step``, ``energy``, ``loss``
    (delivered in bursts of ``check_every``);
    epoch events carry ``metrics``, ``net``, ``state`` (to checkpoint) and ``inference`` (the
    per-node energy trace); a callback returning False at an epoch event stops training there.
    ``eval_init``: the activity initialisation of the per-epoch evaluations (default: the
    training one, ``avg``/``null`` read as forward where the test query allows it; e.g.
    ``Initialisation()`` tests with the model's own policy after training with ``init="zero"``).

    ``val_fraction``: hold out that class-stratified share of the training set (drawn from
    ``seed``; ``_validation``) and record ``val_accuracy`` / ``val_mse`` and ``best_epoch`` every
    epoch; a ``Dataset`` that already has a validation split (``data.load(val_fraction=...)``) is
    validated on without it. ``FitResult.best_epoch`` / ``best_net`` / ``best_state``: the epoch
    chosen by validation.

    ``mesh``: train on several devices (``"data=8"``, ``"data=2,layer=4"``, a device count or a
    ``jax.sharding.Mesh`` with axes ``data``/``layer``; docs/scaling.md). The result (network,
    state, history) is the plain single-device one.

    Raises :class:`TrainingDiverged` when the energy/loss becomes non-finite,
    ``data.DataShapeError`` before compiling when the data does not fit the nodes."""
    config = _config(net, config, settings)
    if val_fraction:
        data = split_validation(data, val_fraction, seed)
    _limits.check_training(net.model, {"steps": getattr(config.inference, "steps", None),
                                            "epochs": config.epochs,
                                            "batch_size": config.batch_size}, seed)
    train = TrainData.of(net, data, query, test_query)  # binds and checks before compiling
    steps_per_epoch = train.n_train // config.batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch_size {config.batch_size} is larger than the {train.n_train} "
                         "training examples")
    if eval_data is None:
        eval_data = data if isinstance(data, _data.Dataset) else False
    step_fn = make_train_step(net, query, method=config.algorithm, inference=config.inference,
                              init=config.init, weight_optimizer=config.weight_optimizer,
                              record_node_energies=config.algorithm != "bp", jit=mesh is None,
                              precision=config.record.get("precision",
                                                          DEFAULT_SETTINGS["precision"]))
    if state is None:
        state = TrainState(opt_state=step_fn.optimizer.init(eqx.filter(net, eqx.is_inexact_array)),
                           carry=step_fn.init_carry(net, config.batch_size, carry_key(seed)))
    else:
        state = dataclasses.replace(state, history=list(state.history))
    balanced = step_fn.initialiser is not None and step_fn.initialiser.uses("avg")
    if balanced and train.dataset is None:
        raise ValueError("init = avg trains on class-balanced batches: give a Dataset")
    smm = step_fn.smm
    record = {**config.record, "smm_per_batch": smm["smm_pc" if config.algorithm != "bp" else
                                                     "smm_bp"],
              "smm_per_update": float(smm["smm_per_update"]), "steps_per_epoch": steps_per_epoch,
              "seed": seed, "query": query}
    tracer = (make_tracer(net, query, config.inference, config.init)
              if config.algorithm != "bp" and isinstance(config.inference, GradientDescent)
              else None)
    if eval_init is None:
        eval_init = _eval_init(net, test_query, config.init)
    evaluator = Evaluator(config.inference, eval_init, mesh)
    host = _sharding_hook(mesh, step_fn, net, state, config.batch_size)  # identity on one device
    epoch_run = _epoch_runner(config, train, step_fn, tracer, check_every, callback,
                              steps_per_epoch, mesh, seed, balanced)
    record["steps_per_dispatch"] = getattr(epoch_run, "k", 1)

    def evaluation(net_, carry) -> dict:
        return {**_evaluation(evaluator, net_, train, eval_data, test_query, query,
                              eval_batch_size, train_eval_max, carry),
                **validation_metrics(evaluator, net_, train.dataset, query=test_query,
                                     train_query=query, batch_size=eval_batch_size, carry=carry)}

    best = BestEpoch(state.history)
    result = _loop(net, state, config, train, step_fn, epoch_run, evaluation, tracer, record,
                   seed, balanced, best.wrap(callback), trace_inference, host)
    return dataclasses.replace(result, best_epoch=best.epoch, best_net=best.net,
                               best_state=best.state)


def _epoch_runner(config: Config, train: TrainData, step_fn: TrainStep, tracer, check_every: int,
                  callback, steps_per_epoch: int, mesh, seed: int, balanced: bool) -> EpochSteps:
    """The epoch's step runner: one dispatch per step, or ``K`` per dispatch (``_chunked``;
    the ``steps_per_dispatch`` setting, 0 = automatic)."""
    from ._chunked import ChunkedEpochSteps, batch_bytes, steps_per_dispatch

    requested = int(config.record.get("steps_per_dispatch",
                                      DEFAULT_SETTINGS["steps_per_dispatch"]) or 0)
    first = next(iter(train.batches(config.batch_size, seed=seed, epoch=0, balanced=balanced)))
    k = steps_per_dispatch(requested, steps_per_epoch, batch_bytes(first), mesh is not None)
    if mesh is not None and k > 1:
        raise ValueError("steps_per_dispatch > 1 is not supported on a device mesh (mesh=)")
    if k == 1:
        return EpochSteps(step_fn, tracer, check_every, _emitter(callback), steps_per_epoch)
    return ChunkedEpochSteps(step_fn, tracer, check_every, _emitter(callback), steps_per_epoch, k)


def _emitter(callback):
    def emit(event):
        return callback(event) if callback is not None else None

    return emit


def _loop(net, state: TrainState, config: Config, train: TrainData, step_fn: TrainStep,
          epoch_run: "EpochSteps", evaluation, tracer, record: dict, seed: int, balanced: bool,
          callback, trace_inference: bool, host) -> FitResult:
    """The loop over epochs: train an epoch, check the weights, evaluate, report. ``host``: the
    placement on a mesh (the loop's network and state live there; ``view`` is the plain one)."""
    emit = _emitter(callback)
    net, state.opt_state, state.carry = host.place(net, state.opt_state, state.carry)
    view, net_out = state, net
    emit({"kind": "start", "epochs": config.epochs, "start_epoch": state.epoch,
          "steps_per_epoch": epoch_run.steps_per_epoch,
          "smm_per_update": record["smm_per_update"], "config": record})
    base_key = jax.random.PRNGKey(seed)
    while state.epoch < config.epochs:
        epoch = state.epoch  # 0-based index of the epoch being run
        batches = map(host.split, train.batches(config.batch_size, seed=seed, epoch=epoch,
                                                balanced=balanced))
        net, stats = epoch_run(net, state, batches, jax.random.fold_in(base_key, epoch))
        check_params(net, state.step, epoch, epoch_run.steps_per_epoch, stats.last_finite)
        state.wall_time_s += stats.train_time
        metrics = {**stats.metrics(epoch, state.step, record), "wall_time_s": state.wall_time_s}
        net_out = host.net(net)
        view = dataclasses.replace(state, opt_state=host.opt(state.opt_state),
                                   carry=host.carry(state.carry))
        metrics.update(evaluation(net_out, view.carry))
        state.epoch += 1
        n_classes = train.dataset.n_classes if train.dataset is not None else None
        _note_collapse(state.history, metrics, n_classes)
        state.history.append(metrics)
        view.epoch = state.epoch
        trace = None
        if trace_inference and tracer is not None and stats.first_batch is not None:
            try:
                trace = tracer(net_out, host.batch(stats.first_batch), view.carry)
            except Exception:  # noqa: BLE001 - a diagnostic only
                trace = None
        if emit({"kind": "epoch", "epoch": state.epoch, "metrics": metrics, "net": net_out,
                 "state": view, "inference": trace}) is False:
            break
    net_out = host.net(net)
    view = dataclasses.replace(state, opt_state=host.opt(state.opt_state),
                               carry=host.carry(state.carry))
    emit({"kind": "end", "net": net_out, "state": view})
    return FitResult(net=net_out, state=view, history=list(state.history), config=record,
                     smm_per_update=record["smm_per_update"],
                     smm_per_batch=record["smm_per_batch"],
                     steps_per_epoch=epoch_run.steps_per_epoch, traces=step_fn.traces)


def _sharding_hook(mesh, step_fn, net, state, batch_size):
    """What the loop needs to run on a mesh (``pcgraph._sharding.FitPlacement``), or an identity
    stand-in on one device."""
    if mesh is None:
        return _OneDevice()
    from ._sharding import FitPlacement

    return FitPlacement(mesh, step_fn, net, state.opt_state, batch_size)


class _OneDevice:
    def net(self, x):
        return x

    opt = carry = batch = net

    def split(self, batch):  # rows of a memory-mapped data set (pcgraph._rows) read here
        return {k: np.asarray(v) for k, v in batch.items()}

    def place(self, net, opt_state, carry):
        return net, opt_state, carry


def _note_collapse(history: list, metrics: dict, n_classes: int | None) -> None:
    """Record in ``metrics["collapse"]`` a collapse (``_collapse``) this epoch shows, and warn the
    first time a run collapses."""
    from ._collapse import CollapseWarning, collapse

    found = collapse([*history, metrics], n_classes)
    metrics["collapse"] = found.as_dict() if found else None
    if found and not any(r.get("collapse") for r in history):
        warnings.warn(found.message, CollapseWarning, stacklevel=4)


def _evaluation(evaluator: Evaluator, net, train: TrainData, eval_data, test_query: str,
                query: str, batch_size: int, train_max: int, carry) -> dict:
    """The per-epoch evaluation metrics (not counted in the training time)."""
    out: dict = {}
    kw = dict(query=test_query, batch_size=batch_size, carry=carry)
    if train.dataset is not None and train_max != 0:
        ev = evaluator(net, train.dataset, split="train", train_query=query,
                       max_examples=train_max, **kw)
        if train.binding.generative:
            out["train_mse"] = ev.get("mse")
        else:
            out["train_accuracy"] = ev.get("accuracy")
    if eval_data is not False and eval_data is not None:
        if isinstance(eval_data, _data.Dataset):
            ev = evaluator(net, eval_data, train_query=query, **kw)
        else:
            ev = evaluator(net, eval_data, **kw)
        if "accuracy" in ev:
            out["test_accuracy"] = ev["accuracy"]
        if "mse" in ev:
            out["test_mse"] = ev["mse"]
    return out
