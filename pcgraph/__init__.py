"""pcgraph: predictive coding networks of any topology, written in a small language, trained in JAX."""

from ._diagnostics import Diagnostic, PcgError
from ._graph import to_graph
from ._ir import (
    EdgeIR,
    EnergyIR,
    ModelIR,
    NodeIR,
    ParamIR,
    PriorIR,
    QueryIR,
    SettingsIR,
    Span,
    TermIR,
    TransformIR,
)

__version__ = "0.1.0"
