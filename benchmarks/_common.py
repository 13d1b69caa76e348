"""Shared helpers of the benchmarks: records as JSON lines (a long sweep can be resumed and
tabulated), argparse types, mean ± sd and 95 % CIs over seeds, figures, the machine's name.

Training and evaluation use the public API: ``pcgraph.fit`` (per-epoch records from its
``callback``) and ``pcgraph.evaluate`` / ``pcgraph.Evaluator``.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import jax
import numpy as np
import optax

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pcgraph import data as D, build  # noqa: E402


def machine() -> str:
    return f"{platform.machine()} {os.cpu_count()} CPU cores, jax {jax.__version__} ({jax.default_backend()})"


def load_model(path_or_text):
    """A validated model from a ``.pcg`` path or text."""
    from pcgraph import load

    return load(path_or_text)


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Timer:
    """Wall time of a block, minus the paused parts (evaluation inside a training loop)."""

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.paused = 0.0
        return self

    def pause(self):
        self._p = time.perf_counter()

    def resume(self):
        self.paused += time.perf_counter() - self._p

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0 - self.paused


__all__ = ["D", "build", "optax", "machine", "append_jsonl", "read_jsonl", "Timer", "load_model",
           "ROOT", "int_list", "float_list", "str_list", "print_table_only", "mean_sd", "ci95",
           "save_figure", "demo_args", "fmnist_splits", "inference_with"]


def mean_sd(values, digits: int = 2) -> str:
    """``"mean ± sd"`` over seeds (sample sd, ddof = 1); just the mean for a single value."""
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.{digits}f}" + (f" ± {v.std(ddof=1):.{digits}f}" if v.size > 1 else "")


def ci95(values) -> float:
    """Half-width of the 95 % confidence interval of the mean of ``values`` (Student's t with
    n − 1 degrees of freedom: with 3 seeds the quantile is 4.30, not 1.96); nan for one value."""
    from scipy import stats

    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return float("nan")
    return float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v)))


def int_list(s: str) -> list[int]:
    """argparse type: ``"3,5,7"`` -> ``[3, 5, 7]``."""
    return [int(v) for v in s.split(",") if v]


def float_list(s: str) -> list[float]:
    """argparse type: ``"0.25,0.5"`` -> ``[0.25, 0.5]``."""
    return [float(v) for v in s.split(",") if v]


def str_list(s: str) -> list[str]:
    """argparse type: ``"mem,zero"`` -> ``["mem", "zero"]``."""
    return [v for v in s.split(",") if v]


def print_table_only(args, table) -> bool:
    """With ``--table``: print ``table(records of --out)`` and return True (the script then stops)."""
    if args.table:
        print(table(read_jsonl(args.out)))
    return bool(args.table)


def save_figure(fig, path: str | os.PathLike) -> None:
    """Lay out, write (creating the folder) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def demo_args(ap, name: str, seeds=(0, 1, 2)):
    """The options every real-data demo shares: ``--seeds``, ``--png``, ``--out`` (default
    benchmarks/results/NAME.jsonl) and ``--table`` (print the table of ``--out`` and stop)."""
    ap.add_argument("--seeds", type=int_list, default=list(seeds))
    ap.add_argument("--png", help="where to draw the figure")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{name}.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the table of --out and stop")


def fmnist_splits(fraction: float, n_eval: int | None = None):
    """Fashion-MNIST in [0, 1] as flat vectors: ``(ds, train, val, test)``, 10 % of the training
    set held out for validation (seed 0), ``fraction`` of the rest kept, ``n_eval`` validation and
    test images (all when None)."""
    ds = D.load("fashion-mnist", normalize="unit", val_fraction=0.1, fraction=fraction, seed=0)
    flat = [a.reshape(len(a), -1) for a in (ds.x_train, ds.x_val, ds.x_test)]
    return ds, flat[0], flat[1][:n_eval], flat[2][:n_eval]


def inference_with(net, steps: int):
    """The model's inference settings with ``steps`` steps (for ``relax``)."""
    from pcgraph import resolve_config

    return resolve_config(net.plan.settings, steps=steps).inference
