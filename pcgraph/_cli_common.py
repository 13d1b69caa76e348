"""What every ``pcgraph`` subcommand shares: exit codes, ``CliError``, reading a model file.

Imports nothing heavy: the command table of ``_cli`` and every command module import it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from ._errors import Error

EXIT_OK, EXIT_MODEL, EXIT_USAGE = 0, 1, 2


class CliError(Error):
    """A command-line problem: its message goes to stderr, ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_USAGE):
        super().__init__(message)
        self.code = code


def err(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)


def reporting(command: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a subcommand; a ``CliError`` becomes its message on stderr and its exit code."""
    try:
        return command(args)
    except CliError as e:
        err(str(e))
        return e.code


def load_model(path: str):
    """The validated model of the file ``path`` (warnings rendered on stderr), or
    ``CliError`` (exit 1) after rendering every diagnostic."""
    from ._load import check

    checked = check(Path(path))
    if checked.diagnostics:
        print("\n".join(d.render(checked.sources) for d in checked.diagnostics), file=sys.stderr)
    if not checked.ok or checked.model is None:
        n = sum(d.severity == "error" for d in checked.diagnostics)
        raise CliError(f"{path}: {n} error(s); fix the model first (see `pcgraph check`)",
                       EXIT_MODEL)
    return checked.model
