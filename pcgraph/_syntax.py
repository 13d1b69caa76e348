"""Text → parse tree, with every syntax error turned into a ``Diagnostic``.

The grammar is ``pcg.lark``: inside the installed package (``pcgraph/grammar/pcg.lark``, mapped
there by the wheel build) or, in a source checkout, the repository's top-level ``grammar/``.
lark's LALR parser calls :class:`_Build` at every reduction, so no lark tree is built: each rule
becomes a slotted :class:`Node` whose position comes from its first and last tokens (what lark's
``propagate_positions`` computes, at a fraction of its cost in time and memory).
Names with interpolations (``h{i-1}``) are lexed as one token; :func:`parse` parses each ``{...}``
part as an expression and replaces the token by an ``iname`` node (text parts and expression
trees), so the tree handed to ``_lower`` is complete and every position in it is exact.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
import re
import stat
import threading
from pathlib import Path

from lark import Lark, Token
from lark.exceptions import UnexpectedInput
from lark.lexer import PatternStr

from . import _limits
from ._diagnostics import Diagnostic, PcgError, normalise_newlines
from ._ir import Span
from ._syntax_errors import diagnose

__all__ = ["parse", "grammar_path", "parser", "read_source", "Node"]

_REPO_GRAMMAR = Path(__file__).resolve().parent.parent / "grammar" / "pcg.lark"


@functools.lru_cache(maxsize=1)
def grammar_path() -> str:
    """Where the grammar is read from: the installed package first, the repository second."""
    try:
        packaged = importlib.resources.files("pcgraph") / "grammar" / "pcg.lark"
        if packaged.is_file():
            return str(packaged)
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):  # pragma: no cover
        pass
    if _REPO_GRAMMAR.is_file():
        return str(_REPO_GRAMMAR)
    raise FileNotFoundError(
        "pcg.lark not found: neither pcgraph/grammar/pcg.lark (installed package) nor "
        f"{_REPO_GRAMMAR} (source checkout) exists; reinstall pcgraph"
    )


class Node:
    """A rule of the parse tree: ``data`` (the rule's name) and ``children`` (nodes and tokens,
    punctuation and keywords left out), as in a lark ``Tree``. Its position runs from the token
    ``lo`` to the token ``hi``; ``first``/``last`` are the outermost tokens it was parsed from
    (the parentheses around an expression; else ``lo``/``hi``), which bound its parent. ``meta``
    is the node itself, so ``node.meta.line`` works as for a lark tree."""

    __slots__ = ("data", "children", "lo", "hi", "first", "last")

    def __init__(self, data: str, children: list, lo: Token | None, hi: Token | None):
        self.data, self.children = data, children
        self.lo = self.first = lo
        self.hi = self.last = hi

    @property
    def meta(self) -> "Node":
        return self

    @property
    def empty(self) -> bool:
        return self.lo is None

    line = property(lambda self: self.lo.line)
    column = property(lambda self: self.lo.column)
    start_pos = property(lambda self: self.lo.start_pos)
    end_line = property(lambda self: self.hi.end_line)
    end_column = property(lambda self: self.hi.end_column)
    end_pos = property(lambda self: self.hi.end_pos)

    def iter_subtrees(self):
        """Every node below and including this one, children before parents (lark's order)."""
        queue, seen = [self], {}
        for sub in queue:
            seen[id(sub)] = sub
            queue += [c for c in reversed(sub.children) if type(c) is Node and id(c) not in seen]
        return reversed(list(seen.values()))

    def find_data(self, data: str):
        return (t for t in self.iter_subtrees() if t.data == data)

    def __repr__(self) -> str:
        return f"Node({self.data!r}, {self.children!r})"


class _Inline:
    """A rule lark splices into its parent (``_stmt``, repetitions): only its children count."""

    __slots__ = ("children",)

    def __init__(self, children: list):
        self.children = children


_STATE = threading.local()  # per parse: whether a name with {...} was lexed


class _Build:
    """lark's parse callbacks (with ``keep_all_tokens``, so that keywords and brackets still
    bound a node's position; they are left out of its children here). It has one
    callback a rule (``rule(children)``), so that lark calls it directly: its default callback
    would add two Python calls to each of the ~1.2 reductions a token, and pass the rule's name as
    a lark ``Token``, whose ``==`` is a Python method."""

    def __init__(self):
        self.drop: set[str] = set()  # filled once lark has named the terminals

    def __getattr__(self, name: str):
        """The callback of the rule ``name`` (lark looks each rule up once, when it builds the
        parser): inlined ``_`` rules make an ``_Inline``; ``atom`` is a parenthesised
        expression. Terminals (upper case) and dunder names have none."""
        if name.endswith("__") or not name.lstrip("_")[:1].islower():
            raise AttributeError(name)
        name = str(name)  # a plain str: Node.data is compared to strings everywhere
        if name[0] == "_":
            return _Inline
        if name == "atom":
            return _atom
        return functools.partial(self.node, name, self.drop)

    @staticmethod
    def node(data: str, drop: set[str], children: list) -> "Node":
        kept = [c for c in children if not (type(c) is Token and c.type in drop)]
        lo = children[0] if children else None
        if lo is None or type(lo) is not Token:
            lo = next((c if type(c) is Token else c.first for c in children if c is not None),
                      None)
        hi = children[-1] if children else None
        if hi is None or type(hi) is not Token:
            hi = next((c if type(c) is Token else c.last for c in reversed(children)
                       if c is not None), None)
        return Node(data, kept, lo, hi)

    def INAME(self, tok: Token) -> Token:  # a lexer callback (lark calls it for every INAME)
        _STATE.inames = True
        return tok


def _atom(children: list) -> "Node":
    """``"(" expr ")"``: the expression, bounded by its parentheses."""
    inner = children[1]
    inner.first, inner.last = children[0], children[-1]
    return inner


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    text = Path(grammar_path()).read_text(encoding="utf-8")
    # lark's cache (cache=True) is not used: it unpickles a file from the temporary directory
    named = set(re.findall(r"^([A-Z_][A-Z0-9_]*)(?:\.\d+)?\s*:", text, re.M))
    build = _Build()
    lark = Lark(text, parser="lalr", start=["start", "expr"], keep_all_tokens=True,
                maybe_placeholders=True, transformer=build)
    # keywords and punctuation: the anonymous "..." terminals, and named ones starting with _
    build.drop.update(t.name for t in lark.terminals if t.name.startswith("_")
                      or (isinstance(t.pattern, PatternStr) and t.name not in named))
    return lark


def parse(text: str, file: str = "<string>") -> Node:
    """Parse ``.pcg`` text; raise ``PcgError`` (one diagnostic, never a lark traceback).

    Line breaks are counted as editors count them (``\\r\\n``, ``\\r``, form feeds, Unicode
    separators: see ``normalise_newlines``); positions refer to the normalised text."""
    text = normalise_newlines(text)
    lim = _limits.current()
    if len(text) > lim.max_file_bytes:
        msg, hint = _limits.exceeded("max_file_bytes", f"{file} has {len(text):,} characters")
        raise PcgError([Diagnostic("error", msg, Span(file, 1, 1, 1, 2), hint, "limit")],
                       {file: text})
    _STATE.inames = False
    try:
        tree = parser().parse(text, start="start")
    except UnexpectedInput as e:
        raise PcgError([diagnose(e, text, file)], {file: text}) from None
    diags: list[Diagnostic] = []
    if _STATE.inames:
        _expand_interpolations(tree, text, file, diags)
    if diags:
        raise PcgError(diags, {file: text})
    return tree


def read_source(path: str | os.PathLike, span: Span | None = None) -> str:
    """The text of the ``.pcg`` file ``path``, line breaks normalised. Only a regular file is
    read (never a FIFO, device or directory, which could block or never end), and only up to the
    ``max_file_bytes`` limit. Raises ``PcgError`` located at ``span`` (default: the file)."""
    file = os.fspath(path)
    where = span or Span(file, 0, 0)

    def fail(msg: str, hint: str | None = None, code: str = "io"):
        return PcgError([Diagnostic("error", msg, where, hint, code)])

    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise fail(f"cannot read {file}: no such file") from None
    except (OSError, ValueError) as e:
        raise fail(f"cannot read {file}: {getattr(e, 'strerror', None) or e}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise fail(f"cannot read {file}: {kind}", "give a .pcg file")
    limit = _limits.current().max_file_bytes
    if st.st_size > limit:
        msg, hint = _limits.exceeded("max_file_bytes", f"{file} has {st.st_size:,} bytes")
        raise fail(msg, hint, "limit")
    try:
        fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since the stat
                raise fail(f"cannot read {file}: not a regular file")
            data = f.read(limit + 1)
    except OSError as e:
        raise fail(f"cannot read {file}: {e.strerror or e}") from None
    if len(data) > limit:
        msg, hint = _limits.exceeded("max_file_bytes", f"{file} has over {limit:,} bytes")
        raise fail(msg, hint, "limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise fail(f"cannot read {file}: not UTF-8 text (byte {e.start}, line {line})",
                   "save the file as UTF-8") from None
    return normalise_newlines(text)


# ---- interpolated names ----------------------------------------------------------------------

_INTERP = re.compile(r"\{([^{}\n]*)\}")


def _expand_interpolations(tree: Node, text: str, file: str, diags: list[Diagnostic]) -> None:
    for sub in tree.iter_subtrees():
        for i, child in enumerate(sub.children):
            if type(child) is Token and child.type == "INAME":
                try:
                    sub.children[i] = _iname(child, file)
                except PcgError as e:
                    diags.extend(e.diagnostics)
                    if len(diags) >= _MAX_REPORTED:
                        return


_MAX_REPORTED = 100  # syntax errors inside names reported at most


def _iname(tok: Token, file: str) -> Node:
    """``h{i-1}x`` → Node('iname', [Token('TEXT','h'), <expr tree>, Token('TEXT','x')])."""
    parts: list = []
    pos = 0
    s = str(tok)
    for m in _INTERP.finditer(s):
        if m.start() > pos:
            parts.append(Token("TEXT", s[pos : m.start()]))
        inner = m.group(1)
        col = tok.column + m.start(1)  # column of the first character inside the braces
        if not inner.strip():
            span = Span(file, tok.line, col - 1, tok.line, col + 1 + len(inner))
            raise PcgError(
                [Diagnostic("error", "empty {} in a name", span,
                            hint="put a loop variable or parameter inside, e.g. h{i}",
                            code="syntax")]
            )
        try:
            parts.append(_shifted(parser().parse(inner, start="expr"), tok, col))
        except UnexpectedInput:
            # pad so that lark reports the expression's true line and column (errors only)
            padded = "\n" * (tok.line - 1) + " " * (col - 1) + inner
            try:
                parser().parse(padded, start="expr")
            except UnexpectedInput as e:
                raise PcgError([diagnose(e, padded, file, inside_name=True)]) from None
            raise  # pragma: no cover - the padded text parses as the bare one does
        pos = m.end()
    if pos < len(s):
        parts.append(Token("TEXT", s[pos:]))
    return Node("iname", parts, tok, tok)


def _shifted(tree: Node, tok: Token, col: int) -> Node:
    """Positions of an expression parsed on its own moved to where it sits in the name ``tok``
    (an interpolation is on one line, the name's, starting at column ``col``)."""
    dc, dp = col - 1, tok.start_pos + (col - tok.column)

    def move(x) -> None:
        x.line = x.end_line = tok.line
        x.column += dc
        x.end_column += dc
        x.start_pos += dp
        x.end_pos += dp

    tokens = {}  # a node's position is its tokens' (brackets included): move each token once
    for sub in tree.iter_subtrees():
        for c in (*sub.children, sub.lo, sub.hi, sub.first, sub.last):
            if type(c) is Token:
                tokens[id(c)] = c
    for c in tokens.values():
        move(c)
    return tree


# ---- syntax errors -----------------------------------------------------------------------------
