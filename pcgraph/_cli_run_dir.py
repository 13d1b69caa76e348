"""The run directory of ``pcgraph train``: what it holds, whether a new run may replace the one
in it, and what ``--resume`` takes from (and must match in) its checkpoint.

Imports nothing heavy at module level.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ._cli_common import CliError

CHECKPOINT = "checkpoint.eqx"
BEST = "best.eqx"  # the epoch chosen by validation (with --val-fraction)
METRICS = "metrics.jsonl"

# options that change the training trajectory (must match on --resume)
TRAJECTORY = ("data", "fraction", "val_fraction", "seed", "steps", "solver", "init", "init_node", "init_option",
              "activity_lr", "weight_lr", "optimizer", "algorithm", "batch_size", "query",
              "test_query", "weight_decay", "activity_optimizer", "parameterisation", "normalize",
              "precision", "mask")
# resolved hyperparameters that must match the checkpoint on --resume
CONFIG_TRAJECTORY = ("steps", "activity_lr", "activity_optimizer", "weight_lr", "weight_optimizer",
                     "weight_decay", "init", "solver", "algorithm", "batch_size",
                     "parameterisation", "precision")


def append_jsonl(path: Path, records) -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r, allow_nan=True) + "\n")
        f.flush()


def rewrite_metrics(path: Path, keep_epochs: int) -> None:
    """Keep the records of finished epochs (those a checkpoint covers); drop partial lines."""
    from ._checkpoint import atomic_write

    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if int(r.get("epoch", 0) or 0) <= keep_epochs and r.get("type") != "diverged":
            kept.append(line)
    atomic_write(path, lambda f: f.write("".join(s + "\n" for s in kept)), "w")


def start_fresh(out: Path) -> None:
    """An empty run directory: no checkpoint, an empty metrics file."""
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CHECKPOINT
    for stale in (ckpt, ckpt.with_suffix(".json"), out / BEST, (out / BEST).with_suffix(".json")):
        stale.unlink(missing_ok=True)
    (out / METRICS).write_text("")


def jsonable_dict(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (str, int, float, bool, type(None)))}


def jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def refuse_overwrite(out: Path, name: str, mhash: str, cli: dict, overwrite: bool) -> None:
    """A new run in a directory that holds one: fine when it is the same run (same model and
    options) or with --overwrite; otherwise a CliError naming what differs."""
    from ._checkpoint import CheckpointError, read_meta
    from ._run import run_differences

    ckpt_path = out / CHECKPOINT
    try:
        meta = read_meta(ckpt_path) if ckpt_path.exists() else None
    except (CheckpointError, OSError):
        meta = None
    diffs = (run_differences(meta, name, mhash, cli, TRAJECTORY) if meta is not None
             else ["an unfinished run (no checkpoint)"])
    if not diffs:
        print(f"note: {out} holds an earlier run of the same command; replacing it",
              file=sys.stderr)
    elif overwrite:
        print(f"note: --overwrite: replacing the run in {out} ({'; '.join(diffs)})",
              file=sys.stderr)
    else:
        raise CliError(f"{out} holds a different run ({'; '.join(diffs)}); pass --out DIR for a "
                       "new directory, --resume to continue that run, or --overwrite to replace it")


def resume_options(cli: dict, ckpt_path: Path) -> dict:
    """``--resume``: the checkpoint's metadata; options left out of ``cli`` are filled in from
    it (in place), options given must match it."""
    from ._checkpoint import CheckpointError, read_meta

    if not ckpt_path.exists():
        raise CliError(f"--resume: no checkpoint {ckpt_path}; leave out --resume to start a new "
                       "run there")
    try:
        meta = read_meta(ckpt_path)
    except (CheckpointError, OSError) as e:
        raise CliError(str(e)) from None
    saved = meta.get("cli", {})
    diffs = []
    for k in TRAJECTORY:
        if cli.get(k) is None:
            cli[k] = saved.get(k)
        elif saved.get(k) is not None and cli[k] != saved.get(k):
            diffs.append(f"--{k.replace('_', '-')} {cli[k]} (checkpoint: {saved.get(k)})")
    if diffs:
        raise CliError(f"cannot resume {ckpt_path}: options differ from the checkpoint: "
                       + "; ".join(diffs))
    if cli.get("data_dir") is None:
        cli["data_dir"] = saved.get("data_dir")
    return meta


def check_resumable(meta: dict, record: dict, mhash: str, ckpt_path: Path) -> None:
    """The resolved configuration ``record`` and the model must be the checkpoint's."""
    saved = meta.get("config") or {}
    diffs = [f"{k} {record[k]!r} (checkpoint: {saved[k]!r})" for k in CONFIG_TRAJECTORY
             if k in saved and k in record and saved[k] != record[k]]
    if diffs:
        raise CliError(f"cannot resume {ckpt_path}: options differ from the checkpoint: "
                       + "; ".join(diffs))
    if meta.get("model_hash") and meta["model_hash"] != mhash:
        raise CliError(f"cannot resume {ckpt_path}: it was written for a different model "
                       f"(model hash {meta['model_hash'][:12]}, this file {mhash[:12]})")
