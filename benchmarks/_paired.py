"""Paired, interleaved timing: every round runs every function once (in a rotated order), and a
function's figure is the median over rounds of its per-round ratio to a reference. On a shared,
bursty machine single medians swing by ±15 %; per-round ratios cancel the load both see."""

from __future__ import annotations

import statistics
import time
from typing import Callable, Mapping

import jax


def once(fn: Callable) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


def paired_rounds(fns: Mapping[str, Callable], rounds: int, budget_s: float | None = None,
                  min_rounds: int = 3) -> dict[str, list[float]]:
    """``{name: [seconds per round]}``: ``rounds`` rounds (fewer once ``budget_s`` is spent, but at
    least ``min_rounds``); each function is called once per round, the order rotated."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    t0 = time.perf_counter()
    for r in range(rounds):
        if budget_s is not None and r >= min_rounds and time.perf_counter() - t0 > budget_s:
            break
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(once(fns[name]))
    return times


def summary(times: Mapping[str, list[float]], ref: str) -> dict[str, dict]:
    """Per function: median ms, min ms, and the median of its per-round ratios to ``ref``."""
    out = {}
    for k, v in times.items():
        ratios = [a / b for a, b in zip(v, times[ref])]
        out[k] = {"ms_median": 1e3 * statistics.median(v), "ms_min": 1e3 * min(v),
                  "ratio_median": statistics.median(ratios), "rounds": len(v)}
    return out
