"""The ``pcgraph`` command line: a thin layer over the Python API.

Subcommands live in ``COMMANDS``, a table of name -> ``Command(help, configure, run)``. ``configure``
adds the subcommand's arguments to its argparse parser; ``run`` takes the parsed arguments and
returns the exit status. Either may be a ``"module:function"`` string, imported only when needed,
so ``pcgraph check`` and ``pcgraph fmt`` never import JAX: a command that needs JAX (``train``,
``eval``, ``draw``, ``plot``) names its runner as a string and keeps its ``configure`` free of heavy
imports. Adding a command is adding one entry to ``COMMANDS``.

``pcgraph check FILE...`` exits 0 when every file is valid (warnings go to stderr), 1 otherwise,
with every diagnostic rendered (``file:line:col``, the source line, a caret and a hint).
``--json`` prints one JSON document on stdout: an object for one file, a list of objects (in the
order given) for several. See ``check_report`` for its fields.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence, Union

from ._diagnostics import PcgError

if TYPE_CHECKING:
    from ._load import Checked

Runner = Union[str, Callable[[argparse.Namespace], int]]
Configurer = Union[str, Callable[[argparse.ArgumentParser], None], None]


@dataclass(frozen=True)
class Command:
    help: str
    configure: Configurer
    run: Runner


def _resolve(target):
    if isinstance(target, str):
        module, _, name = target.partition(":")
        return getattr(importlib.import_module(module), name)
    return target


def load_file(path: str) -> Checked:
    """Read, parse and validate the file ``path``; never raises for problems in the file."""
    from ._load import check

    return check(Path(path))


# -------------------------------------------------------------------------------- check
def _terms(edge) -> list[dict]:
    return [
        {"pre": t.pre, "chain": [tr.kind for tr in t.chain], "bias": t.bias} for t in edge.terms
    ]


def param_count(model) -> int | None:
    """Number of trainable parameters of the energy and amortised edges (None if shapes fail)."""
    from ._shapes import param_shapes, resolve_chain

    shapes = {n.name: tuple(n.shape) for n in model.nodes}
    total = 0
    try:
        for e in (*model.edges, *model.amortised):
            for t in e.terms:
                for step in resolve_chain(t.chain, shapes[e.src], shapes[e.dst]):
                    total += sum(math.prod(s) for s in param_shapes(step, t.bias).values())
    except Exception:
        return None
    return total


def check_report(path: str, loaded: Checked) -> dict:
    """The JSON description of the checked file ``path``.

    ``{"file", "ok", "model", "nodes": [{"name","shape","act","energy","precision","prior",
    "init"}], "edges" / "amortised": [{"src","dst","terms": [{"pre","chain","bias"}]}],
    "param_count", "settings", "graph": {"is_dag","cycles","roots","leaves","isolated",
    "longest_path"}, "queries": [{"name","clamp","read","partial","forward": {"feasible","reason","cycle",
    "unclamped_roots"}, "init_plan": {node: method}}], "diagnostics": [Diagnostic.as_dict()]}``.
    After a syntax error only ``file``, ``ok``, ``model`` (null) and ``diagnostics`` are present."""
    from ._feasibility import graph_report, plan_with_problems, query_feasibility

    out: dict = {"file": path, "ok": loaded.ok, "model": None}
    m = loaded.model
    if m is not None:
        out["model"] = m.name
        out["nodes"] = [
            {"name": n.name, "shape": list(n.shape), "act": n.act, "energy": n.energy.kind,
             "precision": n.energy.precision,
             "prior": None if n.prior is None else
             {"kind": n.prior.kind, "mean": n.prior.mean, "std": n.prior.std},
             "init": n.init}
            for n in m.nodes
        ]
        out["edges"] = [{"src": e.src, "dst": e.dst, "terms": _terms(e)} for e in m.edges]
        out["amortised"] = [{"src": e.src, "dst": e.dst, "terms": _terms(e)} for e in m.amortised]
        out["param_count"] = param_count(m)
        out["settings"] = m.settings.as_dict()
        out["graph"] = graph_report(m).as_dict()
        out["queries"] = [
            {"name": q.name, "clamp": list(q.clamp), "read": list(q.read),
             "partial": [{"node": n, "mask": m} for n, m in q.partial],
             "forward": query_feasibility(m, q).as_dict(),
             "init_plan": plan_with_problems(m, q)[0]}
            for q in m.queries
        ]
    out["diagnostics"] = [d.as_dict() for d in loaded.diagnostics]
    return out


def _summary(path: str, loaded: Checked) -> str:
    m = loaded.model
    n = param_count(m)
    params = "" if n is None else f", {n:,} parameters"
    warn = sum(d.severity == "warning" for d in loaded.diagnostics)
    tail = f", {warn} warning(s)" if warn else ""
    return (f"{path}: ok (model {m.name}: {len(m.nodes)} nodes, {len(m.edges)} edges"
            f"{params}{tail})")


def _configure_check(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help=".pcg files to check")
    p.add_argument("--json", action="store_true",
                   help="print a JSON report (an object for one file, a list for several)")


def run_check(args: argparse.Namespace) -> int:
    results = [load_file(f) for f in args.files]
    for path, r in zip(args.files, results):
        if r.diagnostics:
            print("\n".join(d.render(r.sources) for d in r.diagnostics), file=sys.stderr)
        if not args.json:
            if r.ok:
                print(_summary(path, r))
            else:
                n = sum(d.severity == "error" for d in r.diagnostics)
                print(f"{path}: {n} error(s)", file=sys.stderr)
    if args.json:
        reports = [check_report(path, r) for path, r in zip(args.files, results)]
        doc = reports[0] if len(reports) == 1 else reports
        print(json.dumps(doc, indent=2))
    return 0 if all(r.ok for r in results) else 1


# ---------------------------------------------------------------------------------- fmt
def _configure_fmt(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help=".pcg file to format")


def run_fmt(args: argparse.Namespace) -> int:
    loaded = load_file(args.file)
    if not loaded.ok or loaded.model is None:
        print("\n".join(d.render(loaded.sources) for d in loaded.diagnostics), file=sys.stderr)
        return 1
    from ._format import format_model

    try:
        text = format_model(loaded.model)
    except ValueError as err:  # a value .pcg cannot spell (never from a checked file)
        print(f"{args.file}: error: cannot format: {err}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


# ------------------------------------------------------------------------------- table
# the commands that need JAX name their modules as strings: imported only when they run (their
# ``configure`` modules import nothing heavy)
COMMANDS: dict[str, Command] = {
    "check": Command("check .pcg files: syntax, names, shapes, graph, queries", _configure_check,
                     run_check),
    "fmt": Command("print a .pcg file in canonical form", _configure_fmt, run_fmt),
    "analyse": Command("energies, activity-Hessian spectrum, PC-vs-BP alignment, equilibrium",
                       "pcgraph._cli_analyse:configure_analyse", "pcgraph._cli_analyse:run_analyse"),
    "train": Command("train a model on a data set (progress, metrics.jsonl, checkpoints, --resume)",
                     "pcgraph._cli_options:configure_train", "pcgraph._cli_train:run_train"),
    "eval": Command("evaluate a checkpoint on a data set's test split",
                    "pcgraph._cli_eval:configure_eval", "pcgraph._cli_eval:run_eval"),
    "draw": Command("draw a model's topology (PNG/SVG)",
                    "pcgraph._cli_draw:configure_draw", "pcgraph._cli_draw:run_draw"),
    "plot": Command("plot training curves of a run directory",
                    "pcgraph._cli_draw:configure_plot", "pcgraph._cli_draw:run_plot"),
}


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="pcgraph", description="Predictive coding networks of any topology.")
    parser.add_argument("--version", action="version", version=f"pcgraph {__version__}")
    parser.add_argument("--limit", action="append", metavar="NAME=VALUE",
                        help="raise (or lower) a size limit, e.g. --limit max_nodes=2000000 "
                             "(repeatable; see pcgraph._limits.Limits for the names)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        if cmd.configure is not None:
            _resolve(cmd.configure)(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ._limits import LimitError, parse_assignments, set_limits

    try:
        set_limits(**parse_assignments(args.limit))
    except LimitError as err:
        print(f"error: --limit: {err}", file=sys.stderr)
        return 2
    try:
        return int(_resolve(args._run)(args) or 0)
    except PcgError as err:  # a command that loads a model without catching
        print(err.render(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
