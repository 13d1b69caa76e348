"""The intermediate representation: frozen dataclasses, each carrying its source span.

The IR is what the language lowers to (after parameters, loops, blocks and includes have been
expanded) and what every later stage reads: the graph builder, the validator, the formatter and
the JAX network builder. It is plain Python (no JAX, no lark) and immutable.

A model is a flat list of nodes, energy edges (``->``), amortised edges (``~>``), queries and
settings. An edge ``u -> v`` carries one or more *terms* whose outputs are summed (``dense + identity``
is one edge with two terms); each term is a pre-activation applied to the source followed by a
chain of transforms (``maxpool(2) |> flatten |> dense``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from ._registry import DEFAULT_SETTINGS


@dataclass(frozen=True, order=True)
class Span:
    """A region of source text. Lines and columns are 1-based; ``end_*`` is exclusive."""

    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


NO_SPAN = Span("<api>", 0, 0, 0, 0)

Scalar = int | float | bool | str


@dataclass(frozen=True)
class EnergyIR:
    """The energy of a node with parents: ``gaussian`` (½·precision·‖ε‖², ``precision`` a number or
    ``learned`` / ``learned_diagonal``), ``categorical``, ``bernoulli`` (logits) or ``laplace``
    (‖ε‖₁ / scale)."""

    kind: str = "gaussian"
    precision: float | str = 1.0
    scale: float = 1.0

    @property
    def learned(self) -> bool:
        return isinstance(self.precision, str)


@dataclass(frozen=True)
class PriorIR:
    """An energy on a parentless node: ``gaussian(mean, std)``."""

    kind: str = "gaussian"
    mean: float = 0.0
    std: float = 1.0


@dataclass(frozen=True)
class NodeIR:
    name: str
    shape: tuple[int, ...]
    act: str = "identity"
    energy: EnergyIR = EnergyIR()
    prior: PriorIR | None = None
    init: str | None = None  # per-node initialisation method, or None for the query/model default
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True)
class TransformIR:
    """One transform of an edge chain: ``dense``, ``conv(kernel=3, stride=1, padding=1)``, ...

    ``args`` are keyword arguments sorted by name, values already evaluated to numbers, booleans or
    identifiers; ``posargs`` positional ones (``maxpool(2)``)."""

    kind: str
    posargs: tuple[Scalar, ...] = ()
    args: tuple[tuple[str, Scalar], ...] = ()
    span: Span = field(default=NO_SPAN, compare=False)

    def get(self, name: str, default: Any = None) -> Any:
        for k, v in self.args:
            if k == name:
                return v
        return default

    @property
    def kwargs(self) -> Mapping[str, Scalar]:
        return dict(self.args)


@dataclass(frozen=True)
class TermIR:
    """One summand of an edge: ``pre`` applied to the source, then ``chain`` in order.

    ``options`` are the term's remaining settings (``bias``, ``init``/``w_init`` ...), sorted."""

    chain: tuple[TransformIR, ...]
    pre: str = "identity"
    bias: bool = True
    weight_init: str = "default"
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True)
class EdgeIR:
    """``src -> dst`` (energy edge, ``amortised=False``) or ``src ~> dst`` (amortised initialiser)."""

    src: str
    dst: str
    terms: tuple[TermIR, ...]
    amortised: bool = False
    span: Span = field(default=NO_SPAN, compare=False)

    @property
    def key(self) -> str:
        arrow = "~>" if self.amortised else "->"
        return f"{self.src}{arrow}{self.dst}"


@dataclass(frozen=True)
class QueryIR:
    """A named query: which nodes are clamped (held at data), partly clamped (by an element mask
    that comes with the data), read out, and (optionally) per-node initialisation overrides. Every
    node that is not clamped is free."""

    name: str
    clamp: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    init: tuple[tuple[str, str], ...] = ()  # (node, method) overrides for this query
    span: Span = field(default=NO_SPAN, compare=False)
    # spans of each named node, for diagnostics pointing at the exact name
    name_spans: tuple[tuple[str, Span], ...] = field(default=(), compare=False)
    # partial observations ``clamp NODE where MASK``: (node, mask) pairs; the data holds an element
    # mask ``MASK`` of the node's shape (1 = observed, clamped; 0 = missing, free). Such a node is
    # not in ``clamp``: it counts as free for feasibility and initialisation.
    partial: tuple[tuple[str, str], ...] = ()


# Settings every model has, with defaults: the registry holds them (one place).
@dataclass(frozen=True)
class SettingsIR:
    values: tuple[tuple[str, Scalar], ...] = ()
    span: Span = field(default=NO_SPAN, compare=False)

    def get(self, name: str, default: Any = None) -> Any:
        for k, v in self.values:
            if k == name:
                return v
        if default is None:
            return DEFAULT_SETTINGS.get(name)
        return default

    def as_dict(self) -> dict[str, Scalar]:
        out = dict(DEFAULT_SETTINGS)
        out.update(self.values)
        return out


@dataclass(frozen=True)
class ParamIR:
    name: str
    value: int | float
    used: bool = field(default=True, compare=False)  # analysis metadata
    span: Span = field(default=NO_SPAN, compare=False)


@dataclass(frozen=True)
class ModelIR:
    name: str
    nodes: tuple[NodeIR, ...]
    edges: tuple[EdgeIR, ...]  # energy edges (->)
    amortised: tuple[EdgeIR, ...] = ()  # amortised edges (~>), outside the energy
    queries: tuple[QueryIR, ...] = ()
    settings: SettingsIR = SettingsIR()
    params: tuple[ParamIR, ...] = ()
    source: str = "<api>"
    span: Span = field(default=NO_SPAN, compare=False)

    def node(self, name: str) -> NodeIR:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def query(self, name: str) -> QueryIR:
        for q in self.queries:
            if q.name == name:
                return q
        raise KeyError(
            f"model {self.name!r} has no query {name!r}; it has: "
            + ", ".join(q.name for q in self.queries)
        )

    def replace(self, **changes: Any) -> "ModelIR":
        return dataclasses.replace(self, **changes)
