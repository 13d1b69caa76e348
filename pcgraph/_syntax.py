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
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from . import _limits
from ._diagnostics import Diagnostic, PcgError, normalise_newlines
from ._ir import Span

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
    bound a node's position; they are left out of its children here)."""

    def __init__(self, drop: frozenset[str]):
        self.drop = drop

    def __default__(self, data, children: list, _meta):
        if data[0] == "_":
            return _Inline(children)
        drop = self.drop
        kept = [c for c in children if not (type(c) is Token and c.type in drop)]
        if data == "atom":  # "(" expr ")": the expression, bounded by its parentheses
            inner = kept[0]
            inner.first, inner.last = children[0], children[-1]
            return inner
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


@functools.lru_cache(maxsize=1)
def parser() -> Lark:
    text = Path(grammar_path()).read_text(encoding="utf-8")
    # lark's cache (cache=True) is not used: it unpickles a file from the temporary directory
    named = set(re.findall(r"^([A-Z_][A-Z0-9_]*)(?:\.\d+)?\s*:", text, re.M))
    build = _Build(frozenset())
    lark = Lark(text, parser="lalr", start=["start", "expr"], keep_all_tokens=True,
                maybe_placeholders=True, transformer=build)
    # keywords and punctuation: the anonymous "..." terminals, and named ones starting with _
    build.drop = frozenset(t.name for t in lark.terminals if t.name.startswith("_")
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
        raise PcgError([_diagnose(e, text, file)], {file: text}) from None
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
                raise PcgError([_diagnose(e, padded, file, inside_name=True)]) from None
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

_WORDS = {"NAME": "a name", "INAME": "a name", "NUMBER": "a number", "STRING": 'a string "..."',
          "$END": "the end of the file"}
_STATEMENTS = ("NODE", "PARAM", "SETTINGS", "FOR", "BLOCK", "USE", "INCLUDE", "QUERY")
_NODE_OPTS = {"ACT", "ENERGY", "PRIOR", "INIT"}


def _show(terminal: str) -> str:
    if terminal in _WORDS:
        return _WORDS[terminal]
    t = parser().get_terminal(terminal)
    if isinstance(t.pattern, PatternStr):
        return repr(t.pattern.value)
    return terminal.lower()  # pragma: no cover


def _found(tok: Token) -> str:
    if tok.type == "$END":
        return "the end of the file"
    if tok.type in ("NAME", "INAME"):
        return f"name {str(tok)!r}"
    if tok.type == "NUMBER":
        return f"number {tok}"
    if tok.type == "STRING":
        return f"string {tok}"
    return repr(str(tok))


def _alternatives(items: list[str]) -> str:
    items = list(dict.fromkeys(items))
    if not items:
        return "something else"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _expected(expected: set[str]) -> str:
    exp = set(expected)
    words = []
    if {"NODE", "QUERY"} <= exp:  # a statement may start here
        exp -= set(_STATEMENTS) | {"NAME", "INAME", "LBRACE", "MODEL"}
        words.append("a statement (node, an edge `a -> b : dense`, param, settings, for, "
                     "block, use, include or query)")
    elif {"BLOCK", "MODEL"} <= exp:  # top level
        exp -= {"BLOCK", "MODEL", "PARAM", "INCLUDE", "$END"}
        words.append("`model NAME { ... }`, block, param or include")
    if _NODE_OPTS <= exp:
        exp -= _NODE_OPTS
        words.insert(0, "a node option (act, energy, prior, init)")
    if {"CLAMP", "READ"} <= exp:
        exp -= {"CLAMP", "READ", "INIT"}
        words.append("clamp, read or init")
    if {"PLUS", "MINUS", "STAR", "SLASH"} <= exp:  # an expression could continue
        exp -= {"PLUS", "MINUS", "STAR", "SLASH", "_DSLASH", "PERCENT"}
        words.append("an operator")
    if {"NUMBER", "NAME"} <= exp and "LPAR" in exp:
        exp -= {"NUMBER", "NAME", "STRING", "LPAR", "MINUS", "PLUS", "INAME"}
        words.append("an expression")
    if "INAME" in exp:
        exp.discard("NAME")
    order = {"COLON": 0, "EDGE": 1, "AMORT": 2, "COMMA": 3}
    rest = sorted(exp, key=lambda t: (order.get(t, 5), t in _WORDS, _show(t)))
    return _alternatives([_show(t) for t in rest] + words)


def _diagnose(e: UnexpectedInput, text: str, file: str, inside_name: bool = False) -> Diagnostic:
    if isinstance(e, UnexpectedCharacters):
        ch = text[e.pos_in_stream] if e.pos_in_stream < len(text) else ""
        span = Span(file, e.line, e.column, e.line, e.column + 1)
        if ch == '"':
            return Diagnostic("error", "unterminated string: add the closing '\"' on this line",
                              span, code="syntax")
        if ch == "{" or ch == "}":
            msg = f"unexpected {ch!r}"
            hint = ("a name with an interpolation is written without spaces and on one line, "
                    "e.g. h{i-1}")
        else:
            msg, hint = f"unexpected character {ch!r}", None
            if ch in "<>|~!&=.":
                hint = "operators are -> ~> |> + - * / // % and ranges are 1..n"
        if inside_name:
            msg += " inside {...} in a name"
        return Diagnostic("error", msg, span, hint=hint, code="syntax")
    if isinstance(e, UnexpectedEOF):  # pragma: no cover - LALR reports UnexpectedToken($END)
        return _eof(text, file, set(e.expected))
    assert isinstance(e, UnexpectedToken)
    tok = e.token
    try:  # the terminals that really can follow (LALR merges lookaheads of similar states)
        exp = set(e.accepts) if e.interactive_parser is not None else set(e.expected)
    except Exception:  # pragma: no cover
        exp = set(e.expected)
    if tok.type == "$END":
        if inside_name:
            return Diagnostic("error", "incomplete expression inside {...} in a name",
                              _after_prev(text, len(text), file), code="syntax")
        return _eof(text, file, exp)
    prev = _prev_token_text(text, tok.start_pos)
    after = f" after {prev!r}" if prev else ""
    # a token on a later line than the previous one: what is missing belongs after the latter
    here = Span(file, tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + len(str(tok)))
    if tok.line > _prev_line(text, tok.start_pos) > 0:
        here = _after_prev(text, tok.start_pos, file)
    hint = None
    if exp == {"EDGE", "AMORT", "COLON"}:
        msg = f"expected ':' and the edge's transform{after} (an edge is `a -> b : dense`)"
        hint = "every edge names its transform, e.g. `: dense` or `: identity`"
    elif exp == {"EDGE", "AMORT"} and tok.type == "EQUAL":
        msg = f"unexpected '='{after}: {prev!r} is not an option here"
        hint = ("node options (act, energy, prior, init) follow the node's shape; "
                "settings go inside `settings { ... }`; parameters are `param NAME = value`")
    elif exp == {"EDGE", "AMORT"}:
        msg = f"expected '->' or '~>'{after}, found {_found(tok)}"
        hint = "an edge is `a -> b : dense`; a node is declared with `node a: [SIZE]`"
    elif exp == {"COMMA", "COLON"}:
        several = "," in _line_before(text, tok)
        msg = f"expected ',' or ':' after the node name{'s' if several else ''}, found {_found(tok)}"
        hint = "a node declaration is `node NAME, NAME: [SIZE] act = ...`"
    elif exp == {"NAME"} and prev in (":", "|>", "+"):
        msg = (f"expected a transform (dense, conv, identity, maxpool, avgpool, flatten){after}, "
               f"found {_found(tok)}")
    elif exp == {"LSQB"}:
        msg = f"expected a shape like [784] or [3,32,32]{after}, found {_found(tok)}"
    elif inside_name:
        msg = f"expected an operator or '}}'{after}, found {_found(tok)}"
    else:
        msg = f"expected {_expected(exp)}{after}, found {_found(tok)}"
    if inside_name:
        msg += " inside {...} in a name"
    return Diagnostic("error", msg, here, hint=hint, code="syntax")


def _eof(text: str, file: str, expected: set[str]) -> Diagnostic:
    opener = _unclosed_brace(text)
    if opener is not None:
        line, col, by_indent = opener
        hint = "add '}' to close it"
        if by_indent:
            hint += " (going by indentation: a later '}' lines up with an outer block)"
        return Diagnostic("error", "the file ends before this '{' is closed",
                          Span(file, line, col, line, col + 1), hint=hint, code="syntax")
    return Diagnostic("error", f"unexpected end of file: expected {_expected(expected)}",
                      _after_prev(text, len(text), file), code="syntax")


def _code_lines(text: str) -> list[str]:
    """Source lines with comments and strings blanked out (same lengths)."""
    out = []
    for line in text.split("\n"):
        line = re.sub(r'"[^"\n]*"', lambda m: " " * len(m.group()), line)
        i = line.find("#")
        out.append(line if i < 0 else line[:i] + " " * (len(line) - i))
    return out


def _unclosed_brace(text: str) -> tuple[int, int, bool] | None:
    """The '{' that most likely lacks its '}': a '}' that starts a line closes the block opened
    on the line with the same indentation; more indented blocks still open are the culprits."""
    stack: list[tuple[int, int, int]] = []  # (line, col, indent of the opening line)
    suspects: list[tuple[int, int]] = []
    for ln, line in enumerate(_code_lines(text), 1):
        indent = len(line) - len(line.lstrip())
        for col, ch in enumerate(line, 1):
            if ch == "{":
                stack.append((ln, col, indent))
            elif ch == "}" and stack:
                if col == indent + 1:  # a '}' that starts its line
                    while len(stack) > 1 and stack[-1][2] > indent:
                        suspects.append(stack.pop()[:2])
                stack.pop()
    if suspects:
        return (*suspects[0], True)
    return (*stack[-1][:2], False) if stack else None


def _prev_position(text: str, pos: int) -> tuple[int, int] | None:
    """(line, col) just after the last code character before offset ``pos``."""
    before = text[:pos]
    lines = _code_lines(before)
    for ln in range(len(lines), 0, -1):
        s = lines[ln - 1].rstrip()
        if s.strip():
            return ln, len(s) + 1
    return None


def _after_prev(text: str, pos: int, file: str) -> Span:
    p = _prev_position(text, pos)
    if p is None:
        return Span(file, 1, 1, 1, 1)
    return Span(file, p[0], p[1], p[0], p[1] + 1)


def _prev_line(text: str, pos: int) -> int:
    p = _prev_position(text, pos)
    return p[0] if p else 0


def _prev_token_text(text: str, pos: int) -> str | None:
    p = _prev_position(text, pos)
    if p is None:
        return None
    line = _code_lines(text[:pos])[p[0] - 1][: p[1] - 1][-_TAIL:]
    last = None
    for last in _TOKEN.finditer(line):  # forward, so linear (a backwards search backtracks)
        pass
    return last.group() if last else None


_TAIL = 4096  # characters of a line looked at for the token before an error
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\{[^{}]*\}[A-Za-z0-9_]*)*|[0-9.]+|->|~>|\|>|//"
                    r"|\.\.|\S")


def _line_before(text: str, tok: Token) -> str:
    """The text of the current line before ``tok`` (to tell one node name from several)."""
    lines = text.split("\n")
    return lines[tok.line - 1][: tok.column - 1] if tok.line - 1 < len(lines) else ""
