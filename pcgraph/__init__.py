"""pcgraph: predictive coding networks of any topology, written in a small language, trained in JAX.

The pipeline, one module a stage::

    .pcg text ─▶ tree ─▶ IR ─▶ nx.DiGraph ─▶ validation ─▶ Network ─▶ energy ─▶ inference ─▶ training

The front half (``load``, ``check``, ``validate``, ``format_model``, ``to_graph``) imports no JAX; the
engine names (``build``, ``energy``, ``infer``, ``fit``, ...) are imported on first use, so
``pcgraph check`` stays fast.
"""

from importlib import import_module
from typing import Any

from ._diagnostics import Diagnostic, PcgError
from ._feasibility import analyse, init_plan, query_feasibility
from ._format import format_model
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
from ._load import check, load, parse_model
from ._validate import validate

__version__ = "0.1.0"

# name -> module that defines it; imported lazily (these modules import JAX)
_LAZY = {
    "Network": "._network",
    "build": "._network",
    "compile_query": "._network",
    "QueryPlan": "._network",
    "energy": "._energy",
    "node_energies": "._energy",
    "predictions": "._energy",
    "infer": "._infer",
    "infer_ode": "._infer",
    "relax": "._infer",
    "InferResult": "._infer",
    "make_train_step": "._learn",
    "make_eval_step": "._learn",
    "StepState": "._learn",
    "activity_hessian": "._theory",
    "condition_number": "._theory",
    "linear_equilibrium": "._theory",
    "initialise": "._init",
    "InitError": "._init",
    "fit": "._train",
    "evaluate": "._train",
    "FitResult": "._train",
    "TrainState": "._train",
    "TrainingDiverged": "._train",
    "fresh_carry": "._train",
    "data": ".data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pcgraph' has no attribute {name!r}")
    mod = import_module(module, __name__)
    value = mod if name == "data" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Diagnostic",
    "PcgError",
    "analyse",
    "check",
    "format_model",
    "init_plan",
    "load",
    "parse_model",
    "query_feasibility",
    "to_graph",
    "validate",
    *_LAZY,
    "EdgeIR",
    "EnergyIR",
    "ModelIR",
    "NodeIR",
    "ParamIR",
    "PriorIR",
    "QueryIR",
    "SettingsIR",
    "Span",
    "TermIR",
    "TransformIR",
]
