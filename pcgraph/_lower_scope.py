"""The state of lowering (``_lower``): lexical scopes of parameters, loop variables, block
arguments and blocks; where statements are being expanded (``_Ctx``); the IR collected so far."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ._ir import EdgeIR, NodeIR, QueryIR, Span

Number = int | float
Value = int | float | bool | str


class _Fail(Exception):
    """A diagnostic has been recorded; abandon the current statement."""


class _Abort(Exception):
    """A limit has been exceeded (and recorded): stop lowering, before more is allocated."""


@dataclass
class _Var:
    value: Value
    kind: str  # "param" | "loop" | "arg"
    span: Span
    listed: bool = False  # a parameter of the loaded file: reported in ModelIR.params
    used: bool = False
    note: str | None = None  # for a name argument: did the caller mean a parameter?


@dataclass
class _Block:
    name: str
    params: tuple[str, ...]
    body: list
    file: str
    scope: "_Scope"
    span: Span


class _Scope:
    def __init__(self, parent: "_Scope | None" = None):
        self.parent = parent
        self.vars: dict[str, _Var] = {}
        self.blocks: dict[str, _Block] = {}

    def _lookup(self, attr: str, name: str):
        """``name`` in this scope's ``attr`` table, else in the enclosing scopes'."""
        s = self
        while s is not None:
            table = getattr(s, attr)
            if name in table:
                return table[name]
            s = s.parent
        return None

    def var(self, name: str) -> _Var | None:
        return self._lookup("vars", name)

    def block(self, name: str) -> _Block | None:
        return self._lookup("blocks", name)

    def visible(self, attr: str) -> list[str]:
        out: list[str] = []
        s = self
        while s is not None:
            out.extend(getattr(s, attr))
            s = s.parent
        return out


@dataclass(frozen=True)
class _Ctx:
    """Where statements are being expanded: the file their text lives in, the scope, and the
    chain of ``use`` sites that led here (for hints)."""

    file: str
    scope: _Scope
    trace: tuple[tuple[str, Span], ...] = ()
    depth: int = 0  # for loops and block uses around these statements
    mult: int = 1  # how many times these statements run (product of the enclosing loop sizes)

    def child(self, **kw) -> "_Ctx":
        return dataclasses.replace(self, **kw)


@dataclass
class _Out:
    nodes: list[NodeIR] = field(default_factory=list)
    edges: list[EdgeIR] = field(default_factory=list)
    amortised: list[EdgeIR] = field(default_factory=list)
    queries: list[QueryIR] = field(default_factory=list)
    settings: dict[str, tuple[Value, Span]] = field(default_factory=dict)
    settings_span: Span | None = None
