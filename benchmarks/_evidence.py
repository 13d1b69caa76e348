"""Selection on validation and paired statistics over seeds: what every accuracy table uses.

A *run record* (one line of ``benchmarks/results/<name>.jsonl``) carries ``method``, ``setting``
(the method's hyperparameters, a dict), ``seed``, ``phase`` (``grid``: the selection runs of
seed 0; ``seed``: the repeats of a selected setting) and ``epochs``: one dict per evaluation point
with ``epoch`` (a float: fractions of an epoch are fine), ``val`` and ``test`` (accuracy %),
``train_s`` and ``smm`` (cumulative).

* :func:`chosen` — the evaluation point with the best **validation** accuracy (the first on ties);
  test is read there, never used to choose.
* :func:`select` — among runs of one method, the setting whose chosen validation accuracy is best.
* :func:`paired` — the paired difference of two methods over common seeds, with the Student-t
  95 % interval of ``_common.ci95``; :func:`verdict` says "no difference measured" when the interval
  holds 0.
"""

from __future__ import annotations

import json
from typing import Iterable, Sequence

import numpy as np

from _common import ci95


def key_of(setting: dict) -> str:
    """A stable text key of a hyperparameter setting."""
    return json.dumps(setting, sort_keys=True)


def chosen(run: dict) -> dict:
    """The evaluation point of ``run`` with the best validation accuracy (first on ties; a
    non-finite validation accuracy never wins), plus ``last``: the final point."""
    pts = run["epochs"]
    vals = [p["val"] if p.get("val") is not None and np.isfinite(p["val"]) else -np.inf
            for p in pts]
    i = int(np.argmax(vals))
    return {**pts[i], "last": pts[-1]}


def select(runs: Iterable[dict]) -> tuple[dict, dict]:
    """``(setting, run)``: the run (one seed) whose :func:`chosen` validation accuracy is best."""
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to select from")
    best = max(runs, key=lambda r: chosen(r)["val"])
    return best["setting"], best


def by_seed(runs: Iterable[dict], setting: dict) -> dict[int, dict]:
    """The runs of one setting, keyed by seed (the last record of a seed wins)."""
    k = key_of(setting)
    return {r["seed"]: r for r in runs if key_of(r["setting"]) == k}


def mean_sd(values: Sequence[float], digits: int = 2) -> str:
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return "–"
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


def paired(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """(mean of a − b over the seeds both have, its 95 % CI half-width, number of seeds)."""
    seeds = sorted(set(a) & set(b))
    d = np.array([a[s] - b[s] for s in seeds], dtype=float)
    if d.size == 0:
        return float("nan"), float("nan"), 0
    return float(d.mean()), ci95(d), int(d.size)


def verdict(name_a: str, name_b: str, diff: float, half: float, n: int, unit: str = "points") -> str:
    """``"A − B = +0.41 points, 95 % CI [−0.20, +1.02] (3 seeds): no difference measured"``."""
    if n < 2 or not np.isfinite(half):
        return f"{name_a} − {name_b} = {diff:+.2f} {unit} ({n} seed{'s' * (n != 1)}: no interval)"
    lo, hi = diff - half, diff + half
    if lo <= 0 <= hi:
        tail = "no difference measured"
    else:
        tail = f"{name_a if diff > 0 else name_b} ahead"
    return (f"{name_a} − {name_b} = {diff:+.2f} {unit}, 95 % CI [{lo:+.2f}, {hi:+.2f}] "
            f"({n} seeds, paired): {tail}")


def fmt_setting(setting: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(setting.items())) or "–"
