"""What ``pcgraph train`` shows and writes while it runs: the progress bar on stderr, and
``Recorder``, the ``fit`` callback that appends to metrics.jsonl and writes a checkpoint every
epoch (process 0 only when several processes train).

Imports nothing heavy at module level.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from ._cli_run_dir import BEST, CHECKPOINT, METRICS, append_jsonl, jsonable_dict

# how the batch order and step keys follow from the seed (stored in every checkpoint)
RNG = {"batch_order": "numpy default_rng([seed, epoch])",
       "step_key": "fold_in(fold_in(PRNGKey(seed), epoch), batch)"}


class Progress:
    """A tiny progress bar on stderr: redrawn in place on a terminal, one line an epoch otherwise."""

    def __init__(self, stream=None, enabled: bool = True, width: int = 24):
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.width = width
        self.epochs = 0
        self.smm = None
        self._last = 0.0
        self._t0 = time.perf_counter()
        self._dt = []

    def start(self, epochs: int, smm) -> None:
        self.epochs, self.smm = epochs, smm

    @staticmethod
    def _fmt(v, spec=".4g"):
        return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)

    def _line(self, epoch, done, total, energy, loss, acc=None, ms=None) -> str:
        fill = int(self.width * done / max(total, 1))
        bar = "#" * fill + "-" * (self.width - fill)
        parts = [f"epoch {epoch}/{self.epochs} [{bar}] {done}/{total}",
                 f"E {self._fmt(energy)}", f"loss {self._fmt(loss)}"]
        if acc is not None:
            parts.append(f"acc {100 * acc:.1f}%")
        if self.smm is not None:
            parts.append(f"SMM {self._fmt(self.smm, 'g')}")
        if ms is not None:
            parts.append(f"{ms:.2f} ms/step")
        return "  ".join(parts)

    def step(self, ev: dict) -> None:
        if not self.tty:
            return
        now = time.perf_counter()
        if now - self._last < 0.1 and ev["batch"] != ev["steps_per_epoch"]:
            return
        self._last = now
        line = self._line(ev["epoch"], ev["batch"], ev["steps_per_epoch"], ev["energy"],
                          ev["loss"])
        self.stream.write("\r" + line + "\x1b[K")
        self.stream.flush()

    def epoch(self, m: dict, steps_per_epoch: int) -> None:
        if not self.enabled:
            return
        acc = m.get("test_accuracy")
        line = self._line(m["epoch"], steps_per_epoch, steps_per_epoch, m.get("energy"),
                          m.get("train_loss"), acc, m.get("ms_per_step"))
        if acc is None and m.get("test_mse") is not None:
            line += f"  mse {m['test_mse']:.4g}"
        self.stream.write(("\r" if self.tty else "") + line + ("\x1b[K" if self.tty else "") + "\n")
        self.stream.flush()


class Recorder:
    """The ``fit`` callback of ``pcgraph train``.

    ``identity`` is what every checkpoint names besides the training state (seed, model, model
    file, hash and text, settings); ``cli`` the run's options; ``collapsed`` the collapse
    records seen so far (those of a resumed run's history first)."""

    def __init__(self, progress: Progress, out: Path, *, primary: bool, identity: dict,
                 data: str, cli: dict, config: dict, steps_per_epoch: int, collapsed: list,
                 checkpoint: str | None):
        self.progress, self.primary = progress, primary
        self.metrics, self.ckpt = out / METRICS, out / CHECKPOINT
        self.identity, self.data, self.cli, self.config = identity, data, cli, config
        self.steps_per_epoch, self.log_every = steps_per_epoch, 1
        self.collapsed = collapsed
        self.checkpoint = checkpoint  # the path of the last checkpoint written (or resumed)
        self.best = out / BEST  # the checkpoint of the epoch chosen by validation

    def __call__(self, ev: dict) -> None:
        handle = {"start": self._start, "step": self._step, "epoch": self._epoch}.get(ev["kind"])
        if handle is not None:  # "end" needs nothing
            handle(ev)

    def _start(self, ev: dict) -> None:
        self.progress.start(ev["epochs"], ev["smm_per_update"])
        self.config = ev["config"]
        if ev["start_epoch"] == 0 and self.primary:
            append_jsonl(self.metrics, [{"type": "run", "model": self.identity["model"],
                                         "model_file": self.identity["model_file"],
                                         "data": self.data, "seed": self.identity["seed"],
                                         "cli": self.cli, "config": jsonable_dict(self.config)}])
        self.steps_per_epoch = ev["steps_per_epoch"]
        self.log_every = max(1, ev["steps_per_epoch"] // 10)

    def _step(self, ev: dict) -> None:
        self.progress.step(ev)
        if self.primary and (ev["batch"] % self.log_every == 0 or ev["batch"] == 1):
            append_jsonl(self.metrics, [{"type": "step", "epoch": ev["epoch"], "step": ev["step"],
                                         "energy": ev["energy"], "energy_end": ev["energy_end"],
                                         "loss": ev["loss"]}])

    def _epoch(self, ev: dict) -> None:
        m = ev["metrics"]
        self.progress.epoch(m, self.steps_per_epoch)
        if m.get("collapse") and not self.collapsed:
            self.collapsed.append(m["collapse"])
            if self.primary:
                if self.progress.tty:
                    sys.stderr.write("\n")
                print(f"warning: {m['collapse']['message']}", file=sys.stderr)
        recs = [m]
        if ev.get("inference"):
            recs.append({"type": "inference", "epoch": ev["epoch"], "step": m["step"],
                         "node_energies": ev["inference"]})
        if not self.primary:
            return
        append_jsonl(self.metrics, recs)
        from ._checkpoint import save

        st = ev["state"]
        meta = {**st.meta(), **self.identity, "config": dict(self.config), "cli": self.cli,
                "rng": RNG}
        save(self.ckpt, ev["net"], st.opt_state, st.carry, meta)
        self.checkpoint = str(self.ckpt)
        if m.get("best_epoch") == ev["epoch"]:  # validation improved: the best checkpoint
            save(self.best, ev["net"], st.opt_state, st.carry, meta)
