"""Training curves from a run directory's ``metrics.jsonl`` (written by ``pcgraph train``).

``metrics.jsonl`` holds one JSON object a line, each with a ``type``:

- ``"run"`` (first): ``model``, ``model_file``, ``data``, ``seed``, ``cli`` (the options given),
  ``config`` (the resolved settings);
- ``"epoch"``: ``epoch``, ``step``, ``energy``, ``train_loss``, ``train_accuracy``,
  ``test_accuracy`` (or ``train_mse``, ``test_mse``), ``collapse``, ``smm_per_update``, ``total_smm``, ``ms_per_step``, ``epoch_time_s``,
  ``wall_time_s`` (fields that do not apply are ``null``);
- ``"step"``: ``epoch``, ``step``, ``energy``, ``loss`` (every few steps);
- ``"inference"``: ``epoch``, ``step``, ``node_energies`` — ``{node: [E_v at t = 0..T]}`` for one
  batch, the per-node energy over the inference steps.

:func:`plot_run` draws energy, loss and accuracy (MSE for a generative run) per epoch, and the per-node energy over inference
steps when recorded, into one PNG. No JAX is imported here.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a ``metrics.jsonl`` (a run directory or the file itself). A truncated last
    line (a run killed mid-write) is skipped; any other bad line raises ``ValueError``."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no metrics file (run `pcgraph train ... --out DIR` first)")
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON: {e}") from None
    return out


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _series(records, key):
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if _finite(v):
            xs.append(r.get("epoch"))
            ys.append(v)
    return xs, ys


def run_record(records: list[dict]) -> dict | None:
    """``{model, algorithm, data, seed, config, cli}`` of the run a metrics file records (its
    ``"run"`` record, written by ``pcgraph train``), or None for an older file."""
    for r in records:
        if r.get("type") == "run":
            cfg = r.get("config") or {}
            return {"model": r.get("model"), "algorithm": cfg.get("algorithm") or "pc",
                    "data": r.get("data"), "seed": r.get("seed"), "config": cfg,
                    "cli": r.get("cli") or {}}
    return None


def _figure_panel(ax, epochs) -> bool:
    """Accuracy (%) for a classifier, reconstruction MSE for a generative run; False if neither
    was recorded."""
    for keys, title, scale in ((("train_accuracy", "test_accuracy"), "accuracy (%)", 100.0),
                               (("train_mse", "test_mse"), "reconstruction MSE", 1.0)):
        drawn = False
        for key, c in zip(keys, ("#2ca02c", "#9467bd")):
            x, y = _series(epochs, key)
            if y:
                ax.plot(x, [scale * v for v in y], "o-", color=c, label=key.split("_")[0])
                drawn = True
        if drawn:
            ax.set_title(title)
            return True
    ax.set_title("accuracy / MSE")
    return False


def plot_run(run: str | Path, out: str | Path, *, title: str | None = None) -> Path:
    """Plot the curves of run directory (or metrics file) ``run`` to ``out`` (PNG/SVG/PDF)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    records = read_metrics(run)
    epochs = [r for r in records if r.get("type", "epoch") == "epoch"]
    steps = [r for r in records if r.get("type") == "step"]
    infer = [r for r in records if r.get("type") == "inference" and r.get("node_energies")]
    if not epochs and not steps:
        raise ValueError(f"{run}: metrics file has no epoch or step records")

    panels = ["energy", "loss", "accuracy"] + (["inference"] if infer else [])
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(11, 3.8 * nrows), squeeze=False)
    flat = [a for row in axes for a in row]
    for a in flat[len(panels):]:
        a.axis("off")

    spe = None  # steps per epoch, to put step records on the epoch axis
    if epochs and epochs[0].get("step"):
        spe = epochs[0]["step"] / max(epochs[0].get("epoch", 1), 1)
    _energy_panel(flat[panels.index("energy")], epochs, steps, spe)
    _loss_panel(flat[panels.index("loss")], epochs)
    ax = flat[panels.index("accuracy")]
    ax.set_xlabel("epoch")
    if _figure_panel(ax, epochs):
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no accuracy or MSE recorded", ha="center", va="center",
                transform=ax.transAxes, color="#777")
    if infer:
        _inference_panel(flat[panels.index("inference")], infer[-1], plt.get_cmap("viridis"))

    info = run_record(records)
    head = f"{info['model']} ({info['algorithm']}) on {info['data']}" if info else str(Path(run))
    fig.suptitle(title or f"training curves: {head}", fontsize=11)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _log_if_positive(ax, values) -> None:
    if values and all(v > 0 for v in values) and max(values) / min(values) > 20:
        ax.set_yscale("log")


def _energy_panel(ax, epochs, steps, spe) -> None:
    vals = []
    if steps and spe:
        sx = [r["step"] / spe for r in steps if _finite(r.get("energy"))]
        sy = [r["energy"] for r in steps if _finite(r.get("energy"))]
        ax.plot(sx, sy, color="#9ab", lw=0.8, label="per step")
        vals += sy
    x, y = _series(epochs, "energy")
    if y:
        ax.plot(x, y, "o-", color="#1f77b4", label="epoch mean")
        vals += y
    _log_if_positive(ax, vals)
    ax.set_title("energy F (train)")
    ax.set_xlabel("epoch")
    if vals:
        ax.legend(fontsize=8)


def _loss_panel(ax, epochs) -> None:
    vals = []
    for key, lab, c in (("train_loss", "train", "#d62728"), ("test_loss", "test", "#ff9896")):
        x, y = _series(epochs, key)
        if y:
            ax.plot(x, y, "o-", color=c, label=lab)
            vals += y
    _log_if_positive(ax, vals)
    ax.set_title("loss")
    ax.set_xlabel("epoch")
    if vals:
        ax.legend(fontsize=8)


def _inference_panel(ax, rec, cmap) -> None:
    """Per-node energy over the inference steps of the last recorded batch."""
    ne = rec["node_energies"]
    vals = []
    names = list(ne)
    for i, name in enumerate(names):
        ys = list(ne[name])
        vals += [v for v in ys if _finite(v)]
        ax.plot(range(len(ys)), ys, color=cmap(i / max(len(names) - 1, 1)),
                label=name if len(names) <= 12 else None)
    _log_if_positive(ax, vals)
    ax.set_title(f"per-node energy over inference (epoch {rec.get('epoch')})")
    ax.set_xlabel("inference step t")
    if len(names) <= 12:
        ax.legend(fontsize=7, ncol=2)
