"""Collapse detection beyond NaN: a run whose accuracy falls far below its best (to chance, say)
or whose reconstruction error grows far above its best, while every number stays finite.

``collapse(history, n_classes=None)`` looks at the per-epoch records of ``fit`` and returns a
``Collapse`` (the epoch it happened, the metric, its best and its current value) or None. A run
has collapsed when

- accuracy (validation/test, else training) lost more than half of its best gain over chance
  (``best - value > 0.5 · (best - chance)``, with at least 10 points of gain to lose), or
- reconstruction MSE rose to more than twice its best.

``fit`` calls it after every epoch (``warnings.warn(..., CollapseWarning)`` the first time) and
records the finding in the epoch record's ``collapse`` field; ``pcgraph train`` prints it and puts
it in the final summary and ``--json``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

# the fraction of the gain over chance a run may lose before it counts as collapsed
ACCURACY_DROP = 0.5
MIN_GAIN = 0.10
# the factor over its best an MSE may grow to
MSE_RISE = 2.0


class CollapseWarning(UserWarning):
    """Training went on with finite numbers but its figure fell far below its best."""


@dataclass(frozen=True)
class Collapse:
    epoch: int
    metric: str
    value: float
    best: float
    best_epoch: int

    @property
    def message(self) -> str:
        pct = self.metric.endswith("accuracy")
        fmt = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.4g}")
        return (f"training collapsed at epoch {self.epoch}: {self.metric} {fmt(self.value)}, "
                f"far from its best {fmt(self.best)} at epoch {self.best_epoch}; lower the "
                "learning rates or add weight decay (the checkpoint holds the last epoch, not "
                "the best)")

    def as_dict(self) -> dict:
        return {**asdict(self), "message": self.message}


def _series(history: Sequence[Mapping], key: str) -> list[tuple[int, float]]:
    out = []
    for r in history:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append((int(r.get("epoch", len(out) + 1)), float(v)))
    return out


def collapse(history: Sequence[Mapping], n_classes: int | None = None) -> Collapse | None:
    """The collapse the last epoch of ``history`` shows, or None."""
    for key in ("test_accuracy", "train_accuracy"):
        s = _series(history, key)
        if len(s) >= 2:
            chance = 1.0 / n_classes if n_classes else 0.0
            best_epoch, best = max(s, key=lambda t: t[1])
            epoch, value = s[-1]
            if best - chance >= MIN_GAIN and best - value > ACCURACY_DROP * (best - chance):
                return Collapse(epoch, key, value, best, best_epoch)
            return None
    for key in ("test_mse", "train_mse"):
        s = _series(history, key)
        if len(s) >= 2:
            best_epoch, best = min(s, key=lambda t: t[1])
            epoch, value = s[-1]
            if value > MSE_RISE * best and best > 0:
                return Collapse(epoch, key, value, best, best_epoch)
            return None
    return None
