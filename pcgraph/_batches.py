"""Splits and batches (numpy only): a class-stratified subset, seeded training batches, padded
evaluation batches and class-balanced (stream-aligned) batches."""

from __future__ import annotations

from typing import Iterator

import numpy as np


def stratified_indices(y: np.ndarray, fraction: float, rng: np.random.Generator,
                       *, at_least_one: bool = True) -> np.ndarray:
    """Sorted indices of a class-stratified subset: ``round(fraction * n_c)`` of each class ``c``.

    Each class is permuted by ``rng`` and its first samples taken, so for one seed a smaller
    fraction is a subset of a larger one.
    """
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(fraction * len(idx)))
        if at_least_one and fraction > 0:
            k = max(k, 1)
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, epoch: int,
            drop_last: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_b, y_b)`` in a permutation drawn from ``(seed, epoch)``.

    With ``drop_last`` (training default) every batch has exactly ``batch_size`` rows (static
    shapes for jit); the ragged remainder changes with the epoch. Without it the last is smaller.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}")
    if batch_size <= 0 or (drop_last and batch_size > n):
        raise ValueError(f"batch_size {batch_size} does not fit {n} examples")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = perm[i:i + batch_size]
        yield x[idx], y[idx]


def eval_batches(x: np.ndarray, y: np.ndarray,
                 batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(x_b, y_b, mask)`` in order, every example exactly once, all of ``batch_size`` rows.

    The last batch is padded with zeros (label 0); ``mask`` (bool) marks the real rows, so
    ``sum(mask)`` counts them and metrics are ``sum(correct * mask) / sum(mask)``.
    """
    n = len(x)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        m = len(xb)
        mask = np.arange(batch_size) < m
        if m < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - m,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((batch_size - m,) + yb.shape[1:], yb.dtype)])
        yield xb, yb, mask


def class_balanced_batches(x: np.ndarray, y: np.ndarray, batch_size: int, n_classes: int, *,
                           seed: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream-aligned batches: each holds ``k = batch_size // n_classes`` samples of every class.

    Within a batch samples are sorted by class: sample ``j`` of class ``c`` is at row
    ``c * k + j``, so row ``i`` always carries class ``i // k`` (the same "stream" every batch).
    Each class is shuffled by ``(seed, epoch)``; the epoch has ``min_c(n_c) // k`` batches (the
    smallest class bounds it; surplus samples of larger classes vary by epoch).
    """
    if batch_size % n_classes:
        raise ValueError(f"class-balanced batches need batch_size to be a multiple of n_classes: "
                         f"{batch_size} is not a multiple of {n_classes}")
    k = batch_size // n_classes
    rng = np.random.default_rng([seed, epoch])
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(n_classes)]
    n_batches = min(len(p) for p in per_class) // k
    if n_batches == 0:
        counts = {c: len(p) for c, p in enumerate(per_class)}
        raise ValueError(f"class-balanced batches need {k} samples of each class; counts: {counts}")
    for b in range(n_batches):
        idx = np.concatenate([p[b * k:(b + 1) * k] for p in per_class])
        yield x[idx], y[idx]
