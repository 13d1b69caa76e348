"""Validation: a class-stratified split of the training set, per-epoch validation metrics and the
best epoch by validation.

``fit(..., val_fraction=F)`` holds out ``round(F · n_c)`` training examples of every class ``c``
(:func:`split_validation`: the same draw as ``data.load(val_fraction=F, seed=seed)``, fixed by the
seed; the held-out examples are never trained on). Each epoch then records ``val_accuracy`` (or
``val_mse`` for generative models) beside the test metrics, and :class:`BestEpoch` follows the
epoch with the best validation metric (the first on ties; accuracy: highest, MSE: lowest): it adds
``best_epoch`` to every epoch's metrics and keeps that epoch's network and state, which
``FitResult.best`` returns and ``pcgraph train`` writes to ``best.eqx`` beside ``checkpoint.eqx``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from . import data as _data

#: per-epoch validation metrics and whether higher is better
VAL_METRICS = {"val_accuracy": True, "val_mse": False}


def split_validation(dataset: _data.Dataset, fraction: float, seed: int) -> _data.Dataset:
    """``dataset`` with ``fraction`` of every class of its training split moved to ``x_val`` /
    ``y_val`` (class-stratified, drawn with ``numpy.random.default_rng([seed, 1])`` like
    ``data.load``). A data set that already has a validation split is refused (give one or the
    other)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), not {fraction}")
    if not isinstance(dataset, _data.Dataset):
        raise ValueError("val_fraction needs a Dataset (with labels to stratify by); hold out "
                         "validation arrays yourself and pass them as eval data")
    if dataset.x_val is not None:
        raise ValueError(f"data set {dataset.name} already has a validation split "
                         f"({len(dataset.x_val)} examples); leave out val_fraction")
    y = np.asarray(dataset.y_train)
    vi = _data.stratified_indices(y, fraction, np.random.default_rng([seed, 1]),
                                  at_least_one=False)
    if len(vi) == 0 or len(vi) == len(y):
        raise ValueError(f"val_fraction {fraction} of {len(y)} training examples leaves an empty "
                         "split")
    keep = np.setdiff1d(np.arange(len(y)), vi)
    x = dataset.x_train
    return dataclasses.replace(dataset, x_train=x[keep], y_train=y[keep], x_val=x[vi],
                               y_val=y[vi])


def validation_metrics(evaluator, net, dataset, *, query: str, train_query: str,
                       batch_size: int, carry: Any) -> dict:
    """``{"val_accuracy": a}`` (or ``{"val_mse": m}``) on the data set's validation split; ``{}``
    when it has none."""
    if not isinstance(dataset, _data.Dataset) or dataset.x_val is None:
        return {}
    ev = evaluator(net, dataset, split="val", query=query, train_query=train_query,
                   batch_size=batch_size, carry=carry)
    if "accuracy" in ev:
        return {"val_accuracy": ev["accuracy"]}
    return {"val_mse": ev["mse"]} if "mse" in ev else {}


def val_metric(metrics: dict) -> str | None:
    """The validation metric an epoch's metrics hold (None when there is none)."""
    return next((k for k in VAL_METRICS if metrics.get(k) is not None), None)


def best_epoch(history: list[dict]) -> int | None:
    """The (1-based) epoch with the best validation metric in ``history`` (first on ties; a
    non-finite value never wins); None without validation metrics."""
    best, best_v = None, None
    for i, m in enumerate(history):
        k = val_metric(m)
        if k is None or not math.isfinite(float(m[k])):
            continue
        v = float(m[k]) if VAL_METRICS[k] else -float(m[k])
        if best_v is None or v > best_v:
            best, best_v = int(m.get("epoch", i + 1)), v
    return best


class BestEpoch:
    """Follows the best epoch by validation through ``fit``'s epoch events: :meth:`wrap` returns
    a callback that adds ``best_epoch`` to each epoch's metrics, keeps the network and state of
    that epoch (``net``, ``state``; arrays are immutable, so no copy) and then calls the user's
    callback. A resumed run starts from its history (its best network is not in memory:
    ``net`` stays None until a later epoch is better)."""

    def __init__(self, history: list[dict]):
        self.history = list(history)
        self.epoch = best_epoch(self.history)
        self.net = self.state = None

    def wrap(self, callback: Callable[[dict], Any] | None) -> Callable[[dict], Any]:
        def hooked(event: dict):
            if event.get("kind") == "epoch":
                m = event["metrics"]
                self.history.append(m)
                e = best_epoch(self.history)
                if e is not None and e != self.epoch:
                    self.epoch, self.net, self.state = e, event["net"], event["state"]
                m["best_epoch"] = self.epoch
            return callback(event) if callback is not None else None

        return hooked
