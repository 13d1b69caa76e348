"""Syntax errors as diagnostics: what lark found, what it expected, in words, at the right
position (an unclosed brace, the token before, a name where several were meant)."""

from __future__ import annotations

import re

from lark import Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.lexer import PatternStr

from ._diagnostics import Diagnostic
from ._ir import Span

_WORDS = {"NAME": "a name", "INAME": "a name", "NUMBER": "a number", "STRING": 'a string "..."',
          "$END": "the end of the file"}
_STATEMENTS = ("NODE", "PARAM", "SETTINGS", "FOR", "BLOCK", "USE", "INCLUDE", "QUERY")
_NODE_OPTS = {"ACT", "ENERGY", "PRIOR", "INIT"}


def _show(terminal: str) -> str:
    if terminal in _WORDS:
        return _WORDS[terminal]
    from ._syntax import parser  # the parser module imports this one

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


def diagnose(e: UnexpectedInput, text: str, file: str, inside_name: bool = False) -> Diagnostic:
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
