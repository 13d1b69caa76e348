"""Diagnostics: one problem in a ``.pcg`` file, rendered as ``file:line:col: message`` with the
source line and a caret, and the exception that carries all of them at once."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from ._errors import Error
from ._ir import Span


@dataclass(frozen=True)
class Diagnostic:
    severity: str  # "error" | "warning"
    message: str
    span: Span
    hint: str | None = None
    code: str = ""  # a short stable identifier, e.g. "undefined-name"

    def render(self, sources: dict[str, str] | None = None) -> str:
        """``file:line:col: error: message``, the source line, a caret, and the hint. A span
        without a line (an option of the API or the command line) is labelled by its name."""
        head = f"{where(self.span)}: {self.severity}: {self.message}"
        lines = [head]
        text = _source_line(self.span, sources)
        if text is not None:
            width = 1
            if self.span.end_line == self.span.line and self.span.end_col > self.span.col:
                width = self.span.end_col - self.span.col
            lines.append("    " + text.rstrip("\n"))
            lines.append("    " + " " * (self.span.col - 1) + "^" + "~" * (width - 1))
        if self.hint:
            lines.append(f"    hint: {self.hint}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "file": self.span.file,
            "line": self.span.line,
            "col": self.span.col,
            "hint": self.hint,
        }


def where(span: Span) -> str:
    """``file:line:col``, or just the label of a span that has no position (``--init``)."""
    return str(span) if span.line > 0 else span.file


def option_span(label: str) -> Span:
    """The span of an option (``init_overrides`` of the API, ``--init-node`` of the CLI)."""
    return Span(label, 0, 0, 0, 0)


# every line break an editor counts (those of str.splitlines); "\r\n" is one break
_BREAKS = "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_TO_NEWLINE = str.maketrans({c: "\n" for c in _BREAKS})


def normalise_newlines(text: str) -> str:
    """``text`` with every line break made ``\\n``, length preserved (``\\r\\n`` becomes
    `` \\n``), so that offsets are unchanged and the parser counts lines as editors do."""
    if not any(c in text for c in _BREAKS):
        return text
    return text.replace("\r\n", " \n").translate(_TO_NEWLINE)


def _source_line(span: Span, sources: dict[str, str] | None) -> str | None:
    if span.line <= 0:
        return None
    text = None
    if sources is not None and span.file in sources:
        text = sources[span.file]
    else:
        try:
            text = Path(span.file).read_text(encoding="utf-8")
        except (OSError, ValueError):
            return None
    if text is None:
        return None
    lines = normalise_newlines(text).split("\n")
    if span.line - 1 < len(lines):
        return lines[span.line - 1].expandtabs(1)
    return None


class PcgError(Error):
    """A ``.pcg`` model could not be loaded: syntax or validation errors, all of them at once."""

    def __init__(self, diagnostics: Sequence[Diagnostic], sources: dict[str, str] | None = None):
        self.diagnostics = tuple(diagnostics)
        self.sources = dict(sources or {})
        super().__init__(self.render())

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")

    def render(self) -> str:
        return render_all(self.diagnostics, self.sources)


def relabel(err: PcgError, labels: dict[str, str]) -> PcgError:
    """``err`` with option spans renamed (``init_overrides`` -> ``--init-node``)."""
    diags = [d if d.span.line > 0 or d.span.file not in labels else
             Diagnostic(d.severity, d.message, option_span(labels[d.span.file]), d.hint, d.code)
             for d in err.diagnostics]
    return PcgError(diags, err.sources)


def render_all(diagnostics: Iterable[Diagnostic], sources: dict[str, str] | None = None) -> str:
    return "\n".join(d.render(sources) for d in diagnostics)


def did_you_mean(name: str, candidates: Iterable[str]) -> str | None:
    """``"did you mean 'h1'?"`` for the closest candidate, or None; case does not count
    (``ReLU`` finds ``relu``)."""
    by_lower = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), c)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"did you mean {by_lower[close[0]]!r}?" if close else None
