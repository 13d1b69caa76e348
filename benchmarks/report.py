"""Regenerate every table of docs/results.md from the committed records.

Each table of the page sits between markers::

    <!-- table:NAME -->
    ... generated, never edited by hand ...
    <!-- /table:NAME -->

and NAME's generator (:data:`TABLES`) turns ``benchmarks/results/NAME.jsonl`` into the markdown
between them. A table whose records do not exist yet is written as a *pending* note (the command
that would produce it), never as a hand-typed figure.

    python benchmarks/report.py            # rewrite docs/results.md in place
    python benchmarks/report.py --check    # exit 1 (and show the difference) when the page is stale

``tests/test_results_page.py`` runs the check, so a page that disagrees with its records fails
the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib
import io
import re
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
PAGE = ROOT / "docs" / "results.md"
sys.path.insert(0, str(HERE))

BLOCK = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)",
                   re.S)


def _records(name: str) -> list[dict]:
    from _common import read_jsonl

    return read_jsonl(RESULTS / f"{name}.jsonl")


def _module_table(module: str, fn: str = "table"):
    def gen(name: str) -> str:
        return getattr(importlib.import_module(module), fn)(_records(name))

    return gen


def _printed(name: str) -> str:  # scaling.table prints its tables
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        importlib.import_module("scaling").table(SimpleNamespace(out=str(RESULTS / f"{name}.jsonl")))
    return buf.getvalue()


def _reproducibility(name: str) -> str:
    return importlib.import_module("reproducibility").table()


#: table name -> generator(name) -> markdown; the records are benchmarks/results/NAME.jsonl
TABLES = {
    "init_compare": _module_table("init_compare"),
    "init_cyclic": _module_table("init_cyclic"),
    "init_generative": _module_table("init_generative"),
    "mupc_depth": _module_table("mupc_depth", "selection_table"),
    "inpaint": _module_table("inpaint"),
    "inpaint_conv": _module_table("inpaint"),
    "labelgen": _module_table("labelgen"),
    "memory": _module_table("memory"),
    "precision": _module_table("precision"),
    "ode_vs_gd": _module_table("ode_vs_gd"),
    "theory_landscape": _module_table("theory_landscape"),
    "scaling": _printed,
    "reproducibility": _reproducibility,
    "step_speed": _module_table("speed_tables", "step_table"),
    "mupc_speed": _module_table("speed_tables", "mupc_table"),
    "bf16_accuracy": _module_table("speed_tables", "bf16_table"),
    "dispatch_speed": _module_table("speed_tables", "dispatch_table"),
}


def generate(name: str) -> str:
    """The markdown of table ``name`` (a pending note when it has no records yet). ``NAME.K``: the
    K-th (1-based) blank-line-separated block of NAME's output, for prose between its tables."""
    name, _, part = name.partition(".")
    if not (RESULTS / f"{name}.jsonl").exists():
        return (f"*Pending: no records in `benchmarks/results/{name}.jsonl` yet (the figures this "
                "section used to quote were not reproducible from committed records and were "
                "removed; run the command above to produce them).*")
    if name not in TABLES:
        raise KeyError(f"docs/results.md has a table marker {name!r} that report.py does not know; "
                       f"known: {', '.join(TABLES)}")
    text = TABLES[name](name).strip()
    return text.split("\n\n")[int(part) - 1].strip() if part else text


def render(page: str) -> str:
    """``page`` with the body of every table marker regenerated."""
    def body(m: re.Match) -> str:
        return f"{m.group(1)}{generate(m.group('name'))}\n{m.group(4)}"

    return BLOCK.sub(body, page)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="compare only; exit 1 when stale")
    ap.add_argument("--page", default=str(PAGE))
    args = ap.parse_args(argv)
    page = Path(args.page).read_text()
    new = render(page)
    if args.check:
        if new != page:
            sys.stdout.writelines(difflib.unified_diff(page.splitlines(True), new.splitlines(True),
                                                       args.page, "regenerated"))
            return 1
        return 0
    if new != page:
        Path(args.page).write_text(new)
    print(f"{args.page}: {len(BLOCK.findall(page))} tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
