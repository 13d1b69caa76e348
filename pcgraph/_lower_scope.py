"""The state of lowering (``_lower``): lexical scopes of parameters, loop variables, block
arguments and blocks; where statements are being expanded (``Ctx``); the IR collected so far."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ._errors import Error
from ._ir import EdgeIR, NodeIR, QueryIR, Span

Number = int | float
Value = int | float | bool | str


class Fail(Error):
    """A diagnostic has been recorded; abandon the current statement (a signal inside
    lowering: it never leaves ``_lower.lower``)."""


class Abort(Error):
    """A limit has been exceeded (and recorded): stop lowering, before more is allocated (a
    signal inside lowering: it never leaves ``_lower.lower``)."""


@dataclass
class Var:
    value: Value
    kind: str  # "param" | "loop" | "arg"
    span: Span
    listed: bool = False  # a parameter of the loaded file: reported in ModelIR.params
    used: bool = False
    note: str | None = None  # for a name argument: did the caller mean a parameter?


@dataclass
class Block:
    name: str
    params: tuple[str, ...]
    body: list
    file: str
    scope: "Scope"
    span: Span


class Scope:
    def __init__(self, parent: "Scope | None" = None):
        self.parent = parent
        self.vars: dict[str, Var] = {}
        self.blocks: dict[str, Block] = {}

    def _lookup(self, attr: str, name: str):
        """``name`` in this scope's ``attr`` table, else in the enclosing scopes'."""
        s = self
        while s is not None:
            table = getattr(s, attr)
            if name in table:
                return table[name]
            s = s.parent
        return None

    def var(self, name: str) -> Var | None:
        return self._lookup("vars", name)

    def block(self, name: str) -> Block | None:
        return self._lookup("blocks", name)

    def visible(self, attr: str) -> list[str]:
        out: list[str] = []
        s = self
        while s is not None:
            out.extend(getattr(s, attr))
            s = s.parent
        return out


@dataclass(frozen=True)
class Ctx:
    """Where statements are being expanded: the file their text lives in, the scope, and the
    chain of ``use`` sites that led here (for hints)."""

    file: str
    scope: Scope
    trace: tuple[tuple[str, Span], ...] = ()
    depth: int = 0  # for loops and block uses around these statements
    mult: int = 1  # how many times these statements run (product of the enclosing loop sizes)

    def child(self, **kw) -> "Ctx":
        return dataclasses.replace(self, **kw)


@dataclass
class Out:
    nodes: list[NodeIR] = field(default_factory=list)
    edges: list[EdgeIR] = field(default_factory=list)
    amortised: list[EdgeIR] = field(default_factory=list)
    queries: list[QueryIR] = field(default_factory=list)
    settings: dict[str, tuple[Value, Span]] = field(default_factory=dict)
    settings_span: Span | None = None
