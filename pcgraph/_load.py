"""Loading a model: text or file → parse → lower → validate → ``ModelIR``.

``parse_model`` stops after lowering (syntax and lowering errors only); ``load`` also runs the
validator and raises one ``PcgError`` carrying every error (warnings are kept on the exception
and returned by ``check``).
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
from dataclasses import dataclass, field
from typing import Mapping

from lark.exceptions import VisitError

from ._diagnostics import Diagnostic, PcgError, normalise_newlines, option_span
from ._ir import ModelIR, Span
from ._lower import lower
from ._syntax import parse, read_source

__all__ = ["parse_model", "load", "check", "Checked"]


def parse_model(text: str, file: str = "<string>") -> ModelIR:
    """Parse and lower ``.pcg`` text (no validation). Raises ``PcgError``."""
    model, _ = _parse(text, file)
    return model


def _parse(text: str, file: str) -> tuple[ModelIR, dict[str, str]]:
    tree = parse(text, file)
    try:
        return lower(tree, file, text, parse=parse)
    except VisitError as e:  # lark wraps exceptions raised inside visitors; show the real one
        raise e.orig_exc from None


@dataclass
class Checked:
    """The outcome of reading one model: the model (None if it could not be lowered), every
    diagnostic (errors and warnings) and the source texts they point into."""

    model: ModelIR | None
    diagnostics: list[Diagnostic] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(d.severity == "error" for d in self.diagnostics)


def check(path_or_text: str | os.PathLike, *, validate: bool = True,
          params: Mapping[str, float] | None = None) -> Checked:
    """Read, lower and (optionally) validate; never raises for problems in the model.
    ``params`` overrides ``param`` declarations of the file (see :func:`load`)."""
    with _no_gc():  # a parse builds millions of acyclic objects: cyclic GC passes only cost
        return _check(path_or_text, validate, params)


@contextlib.contextmanager
def _no_gc():
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _check(path_or_text, validate: bool, params) -> Checked:
    try:
        text, file = _read(path_or_text)
        text = normalise_newlines(text)
        if params:
            text = override_params(text, file, params)
    except PcgError as e:
        return Checked(None, list(e.diagnostics), dict(e.sources))
    try:
        model, sources = _parse(text, file)
    except PcgError as e:
        return Checked(None, list(e.diagnostics), {file: text, **e.sources})
    except RecursionError:  # a safety net: every recursion is bounded by a limit
        return Checked(None, [Diagnostic("error", "the model is nested too deeply to read",
                                         Span(file, 1, 1, 1, 2), code="limit")], {file: text})
    diags: list[Diagnostic] = []
    if validate:
        validator = _validator()
        if validator is not None:
            diags = list(validator(model, sources))
    return Checked(model, diags, sources)


def load(path_or_text: str | os.PathLike, *, validate: bool = True,
         params: Mapping[str, float] | None = None) -> ModelIR:
    """A model from a ``.pcg`` file path or from ``.pcg`` text. Raises ``PcgError`` with every
    error found (syntax, lowering, then validation).

    ``params`` overrides the values of the file's own ``param`` declarations (at the top level of
    the file or of its model, not in loops or blocks), e.g.
    ``load("models/resnet_mupc.pcg", params={"depth": 128, "width": 512})``; naming a parameter
    the file does not declare is an error."""
    c = check(path_or_text, validate=validate, params=params)
    if not c.ok or c.model is None:
        raise PcgError(c.diagnostics, c.sources)
    return c.model


def override_params(text: str, file: str, params: Mapping[str, float]) -> str:
    """``text`` with the value of each declared ``param NAME = ...`` named in ``params`` replaced
    (declarations at the top level of the file or of its model). Raises ``PcgError`` for a name
    the file does not declare there."""
    tree = parse(text, file)
    spans: dict[str, tuple[int, int]] = {}
    stmts = list(tree.children)
    for st in list(stmts):
        if getattr(st, "data", None) == "model":
            stmts += [c for c in st.children if getattr(c, "data", None) == "param_stmt"]
    for st in stmts:
        if getattr(st, "data", None) != "param_stmt":
            continue
        for d in st.children:
            expr = d.children[1]
            spans[str(d.children[0])] = (expr.meta.start_pos, expr.meta.end_pos)
    unknown = [k for k in params if k not in spans]
    if unknown:
        known = ", ".join(spans) or "none"
        raise PcgError([Diagnostic("error", f"no param {', '.join(map(repr, unknown))} to override "
                                   f"in {file} (declared: {known})", option_span("params"),
                                   code="param-override")])
    for name, (a, b) in sorted(((k, spans[k]) for k in params), key=lambda kv: -kv[1][0]):
        v = params[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise PcgError([Diagnostic("error", f"param {name!r} must be a finite number, got "
                                       f"{v!r}", option_span("params"), code="param-override")])
        text = text[:a] + repr(v) + text[b:]
    return text


def _read(path_or_text: str | os.PathLike) -> tuple[str, str]:
    """(text, file name). A ``Path``, or a one-line string naming a file or ending in .pcg, is a
    path; anything else is the model's text."""
    if isinstance(path_or_text, os.PathLike) or (
        isinstance(path_or_text, str)
        and "\n" not in path_or_text
        and "{" not in path_or_text
        and (path_or_text.endswith(".pcg") or os.path.isfile(path_or_text))
    ):
        file = os.fspath(path_or_text)
        return read_source(file), file
    return str(path_or_text), "<string>"


def _validator():
    """``pcgraph._validate.validate`` if that module exists (it is optional for this module)."""
    try:
        from ._validate import validate
    except ModuleNotFoundError as e:
        if e.name != "pcgraph._validate":
            raise
        return None
    return validate
