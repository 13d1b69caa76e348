"""Rows of a data set read on demand from a memory-mapped file (``data.load(..., mmap=True)``).

On several processes every process iterates the same global batches, but hands only its own rows
to its devices (``jax.make_array_from_callback``; :mod:`pcgraph._sharding`). With the images in
memory every process still reads the whole file; a :class:`Rows` over a memory-mapped IDX file
(``data.read_idx(path, mmap=True)``) reads a row only when it is asked for, so each process reads
the rows of its own devices. Only the operations ``data.load`` and the batching apply are
provided, each lazily: selecting rows, ``astype``, ``+ - * /`` with a per-sample array, reshaping
the samples. ``np.asarray(rows)`` and indexing with a tuple or an integer read."""

from __future__ import annotations

import operator
from typing import Callable

import numpy as np

CHUNK = 4096  # rows read at a time by mean/std


_OPS = (operator.add, operator.sub, operator.mul, operator.truediv)


def _lazy(op, reverse: bool = False):
    """The method ``rows <op> other`` (or ``other <op> rows``), applied when rows are read."""
    def method(self, other):
        return self.map((lambda a: op(other, a)) if reverse else (lambda a: op(a, other)))
    return method


class Rows:
    """``fn(raw[index])`` reshaped to ``(len(index), *sample_shape)``: ``raw`` is read at the
    rows ``index`` only when the values are needed (``np.asarray``, ``rows[i, ...]``)."""

    def __init__(self, raw, index=None, fn: Callable | None = None, sample_shape=None):
        self.raw = raw
        self.index = np.arange(len(raw)) if index is None else np.asarray(index, np.int64)
        self.fn = fn
        self.sample_shape = tuple(raw.shape[1:] if sample_shape is None else sample_shape)
        self.dtype = self._read(self.index[:0]).dtype

    # ---- shape
    @property
    def shape(self) -> tuple:
        return (len(self.index), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"Rows({self.shape}, {self.dtype}, of {type(self.raw).__name__} {self.raw.shape})"

    def _with(self, **kw) -> "Rows":
        out = object.__new__(Rows)
        out.__dict__.update(self.__dict__)
        out.__dict__.update(kw)
        return out

    def reshape(self, shape) -> "Rows":
        shape = tuple(shape)
        if shape[0] not in (-1, len(self)) or np.prod(shape[1:]) != np.prod(self.sample_shape):
            raise ValueError(f"cannot reshape rows {self.shape} to {shape}")
        return self._with(sample_shape=shape[1:])

    # ---- lazy element-wise operations
    def map(self, f: Callable) -> "Rows":
        """``f`` applied to every block of rows read (after the earlier functions)."""
        g = self.fn
        rows = self._with(fn=f if g is None else (lambda a: f(g(a))))
        rows.dtype = rows._read(self.index[:0]).dtype
        return rows

    def astype(self, dtype) -> "Rows":
        return self.map(lambda a: a.astype(dtype))

    __add__, __sub__, __mul__, __truediv__ = (_lazy(o) for o in _OPS)
    __radd__, __rsub__, __rmul__, __rtruediv__ = (_lazy(o, reverse=True) for o in _OPS)

    # ---- reading
    def _read(self, idx: np.ndarray) -> np.ndarray:
        a = np.asarray(self.raw[idx])
        a = self.fn(a) if self.fn is not None else a
        return a.reshape((len(idx), *self.sample_shape))

    def __getitem__(self, key):
        """A slice or an integer array of rows: those rows, still unread (a ``Rows``); an
        integer or a tuple (rows first): the values, read."""
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows].__array__()[(slice(None), *rest)] if not np.isscalar(rows) \
                else self[rows][rest]
        if isinstance(key, (int, np.integer)):
            return self._read(self.index[[key]])[0]
        return self._with(index=self.index[key])

    def __array__(self, dtype=None, copy=None):
        a = self._read(self.index)
        return a if dtype is None else a.astype(dtype)

    # ---- statistics over rows (chunked: never the whole array in memory)
    def _moment(self, axis, dtype, centre=None):
        axis = (axis,) if isinstance(axis, int) else tuple(axis)
        if 0 not in axis:
            raise ValueError("Rows.mean/std reduce over the rows (axis 0) and others")
        total = n = 0
        for i in range(0, len(self), CHUNK):
            a = self._read(self.index[i:i + CHUNK]).astype(dtype)
            if centre is not None:
                a = (a - centre) ** 2
            total = total + a.sum(axis=axis, keepdims=True)
            n += a.size // max(1, np.size(total))
        return total / max(n, 1)

    def mean(self, axis=0, dtype=np.float64):
        return np.squeeze(self._moment(axis, dtype), axis=axis)

    def std(self, axis=0, dtype=np.float64):
        m = self._moment(axis, dtype)
        return np.squeeze(np.sqrt(self._moment(axis, dtype, centre=m)), axis=axis)
