"""``pcgraph draw`` (a model's topology, ``_draw``) and ``pcgraph plot`` (the training curves of a
run directory, ``_plot``). Nothing here imports matplotlib or JAX at module level."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._cli_common import EXIT_OK, EXIT_USAGE, CliError, err, load_model


def configure_draw(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help=".pcg model file")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output picture (.png, .svg or .pdf)")
    p.add_argument("--query", metavar="NAME",
                   help="colour node roles of this query (default: train, else the first)")


def run_draw(args: argparse.Namespace) -> int:
    try:
        model = load_model(args.file)
        suffix = Path(args.output).suffix.lower()
        if suffix not in (".png", ".svg", ".pdf"):
            raise CliError(f"-o {args.output}: use a .png, .svg or .pdf file name")
        if args.query and args.query not in {q.name for q in model.queries}:
            raise CliError(f"model {model.name} has no query {args.query!r}; it has: "
                           + (", ".join(q.name for q in model.queries) or "none"))
        from ._draw import draw

        try:
            path = draw(model, args.output, query=args.query)
        except OSError as e:
            raise CliError(f"cannot write {args.output}: {e}") from None
        print(f"wrote {path}", file=sys.stderr)
        return EXIT_OK
    except CliError as e:
        err(str(e))
        return e.code


# ------------------------------------------------------------------------------ plot
def configure_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="DIR", help="run directory holding metrics.jsonl (or the file)")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output picture (.png)")


def run_plot(args: argparse.Namespace) -> int:
    from ._plot import plot_run, read_metrics, run_record

    try:
        path = plot_run(args.run, args.output)
        print(_plot_header(args.run, run_record(read_metrics(args.run))))
    except (FileNotFoundError, ValueError) as e:
        err(str(e))
        return EXIT_USAGE
    except OSError as e:
        err(f"cannot write {args.output}: {e}")
        return EXIT_USAGE
    print(f"wrote {path}", file=sys.stderr)
    return EXIT_OK


def _plot_header(run: str, info: dict | None) -> str:
    """``run DIR: model ..., algorithm ..., ...`` from the checkpoint next to the metrics (the run
    record of metrics.jsonl when there is none)."""
    from ._checkpoint import CheckpointError, read_meta
    from ._run import checkpoint_path, describe

    d = Path(run) if Path(run).is_dir() else Path(run).parent
    try:
        return f"run {d}: {describe(read_meta(checkpoint_path(d)))}"
    except (CheckpointError, OSError):
        pass
    if info is None:
        return f"run {d}: (no checkpoint or run record: model, algorithm and settings unknown)"
    return f"run {d}: " + describe({"model": info["model"], "seed": info["seed"], "epoch": "-",
                                    "config": info["config"], "cli": info["cli"]})
