"""Data binding: which node gets the inputs and which the labels, and the batches fed to them.

A :class:`pcgraph.data.Dataset` binds through the queries: the *input* is the node clamped in both
the training and the test query (a generative model: the only node the training query clamps); the
*label* node is the one clamped in training but not at test (integer labels, one-hot encoded).
Shapes are checked before anything is compiled (``data.check_shape``), with an error naming the
node and both shapes. A plain ``{node: array}`` dict binds arrays to nodes directly (all arrays of
one length). Batches come from ``pcgraph.data`` (``batches``, ``class_balanced_batches``,
``eval_batches``): a permutation drawn from ``(seed, epoch)``, the ragged last batch dropped in
training and padded (and masked) in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from . import data as _data
from ._diagnostics import did_you_mean
from ._errors import Error


class BindingError(Error, ValueError):
    """The data cannot be bound to the model's nodes (which node gets what is ambiguous)."""


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


def bind(net, query: str = "train", test_query: str | None = "test") -> Binding:
    """Find the input and label nodes from the training and test queries (see module doc)."""
    m = net.plan  # the model's queries, lowered with the network
    qt = m.query(query)
    names = {q.name for q in m.queries}
    qe = m.query(test_query) if test_query and test_query in names else None
    tc = (*qt.clamp, *(n for n, _ in qt.partial))  # a node clamped `where` a mask is data too
    if qe is not None:
        ec = (*qe.clamp, *(n for n, _ in qe.partial))
        inputs = [n for n in tc if n in ec]
        labels = [n for n in tc if n not in ec]
    else:
        inputs, labels = list(tc), []
    if len(inputs) != 1 or len(labels) > 1:
        raise BindingError(
            f"cannot bind a data set to model {m.name!r}: query {qt.name!r} clamps "
            f"{', '.join(qt.clamp) or 'nothing'}"
            + (f" and query {qe.name!r} clamps {', '.join(qe.clamp) or 'nothing'}" if qe else "")
            + "; a data set needs exactly one input node (clamped in both) and at most one label "
            "node (clamped in training, read at test). Pass a {node: array} dict instead.")
    return Binding(inputs[0], labels[0] if labels else None, qt.name,
                   qe.name if qe is not None else None)


def prepare_dataset(net, ds: "_data.Dataset", binding: Binding) -> "_data.Dataset":
    """Check (and fit the layout of) the data set against the bound nodes; before compiling."""
    ds = _data.check_shape(ds, binding.input, net.node_shape(binding.input), "input")
    if binding.label is not None:
        _data.check_shape(ds, binding.label, net.node_shape(binding.label), "target")
    return ds


def check_arrays(net, arrays: Mapping[str, Any], what: str = "data") -> dict[str, np.ndarray]:
    """A ``{node: array}`` dict checked against the nodes' shapes (one length for all)."""
    names = set(net.plan.node_names)
    out = {}
    n = None
    for k, v in arrays.items():
        if k not in names:
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


def clamped_arrays(net, arrays: Mapping[str, Any], query: str, what: str) -> dict:
    """The arrays of the nodes ``query`` clamps (an error naming those missing)."""
    q = net.plan.query(query)
    need = (*q.clamp, *(n for n, _ in q.partial))
    missing = [n for n in need if n not in arrays]
    if missing:
        raise _data.DataShapeError(f"query {query!r} clamps {', '.join(missing)} but the {what} "
                                   "has no array for it")
    return {n: arrays[n] for n in need}


def mask_arrays(net, data: Mapping[str, Any], query: str, what: str) -> dict:
    """The element masks of the nodes ``query`` clamps partly (``clamp img where mask``), each
    checked against its node's data (an error naming those missing or misshapen)."""
    out = {}
    for n, m in net.plan.query(query).partial:
        if m not in data:
            raise _data.DataShapeError(f"query {query!r} clamps {n!r} where {m!r} but the {what} "
                                       f"has no {m!r} array (1 = observed, 0 = missing)")
        a = np.asarray(data[m])
        if n in data and a.shape != np.shape(data[n]):
            raise _data.DataShapeError(f"the mask {m!r} of node {n!r} has shape {a.shape}; it "
                                       f"must have the node's data shape {np.shape(data[n])}")
        out[m] = a
    return out


@dataclass(frozen=True)
class TrainData:
    """The training batches of a run: from a bound data set or from a ``{node: array}`` dict."""

    n_train: int
    dataset: Any = None  # the checked Dataset, or None
    binding: Binding | None = None
    arrays: Mapping[str, np.ndarray] | None = None

    @classmethod
    def of(cls, net, data, query: str, test_query: str) -> "TrainData":
        if isinstance(data, _data.Dataset):
            binding = bind(net, query, test_query)
            ds = prepare_dataset(net, data, binding)
            return cls(len(ds.x_train), ds, binding)
        if isinstance(data, Mapping):
            masks = mask_arrays(net, data, query, "training data")
            nodes = {k: v for k, v in data.items() if k not in masks}
            arrays = clamped_arrays(net, check_arrays(net, nodes, "training data"), query,
                                    "training data")
            return cls(len(next(iter(arrays.values()))), arrays={**arrays, **masks})
        raise TypeError(f"data must be a pcgraph.data.Dataset or a {{node: array}} dict, "
                        f"not {type(data).__name__}")

    def batches(self, batch_size: int, *, seed: int, epoch: int,
                balanced: bool = False) -> Iterator[dict]:
        """One epoch of ``{node: [batch_size, ...]}`` (ragged remainder dropped)."""
        if self.dataset is None:
            if balanced:
                raise ValueError("init = avg trains on class-balanced batches: give a Dataset")
            idx = np.arange(self.n_train)
            for ib, _ in _data.batches(idx, idx, batch_size, seed=seed, epoch=epoch):
                yield {k: a[ib] for k, a in self.arrays.items()}
            return
        ds, b = self.dataset, self.binding
        it = (_data.class_balanced_batches(ds.x_train, ds.y_train, batch_size, ds.n_classes,
                                           seed=seed, epoch=epoch) if balanced else
              _data.batches(ds.x_train, ds.y_train, batch_size, seed=seed, epoch=epoch))
        for xb, yb in it:
            out = {b.input: xb}
            if b.label is not None:
                out[b.label] = ds.one_hot(yb)
            yield out


def eval_batches(arrays: Mapping[str, np.ndarray],
                 batch_size: int) -> Iterator[tuple[dict, np.ndarray]]:
    """``({node: batch}, mask)`` in order, every example once; the last batch zero-padded to
    ``min(batch_size, n)`` rows and ``mask`` marking the real ones."""
    n = len(next(iter(arrays.values())))
    idx = np.arange(n)
    for ib, _, mask in _data.eval_batches(idx, idx, max(1, min(batch_size, n))):
        out = {}
        for k, a in arrays.items():
            b = np.asarray(a[ib])  # a copy (also of rows read on demand, pcgraph._rows)
            if not mask.all():
                b[~mask] = 0
            out[k] = b
        yield out, mask
