"""pcgraph: predictive coding networks of any topology, written in a small language, trained in JAX.

The pipeline, one module a stage (``docs/internals.md``)::

    .pcg text ─▶ tree ─▶ IR ─▶ nx.DiGraph ─▶ validation ─▶ Network ─▶ energy ─▶ inference ─▶ training

The front half (``load``, ``check``, ``validate``, ``format_model``, ``to_graph``) imports no JAX. The
engine names (``build``, ``infer``, ``fit``, ``GradientDescent``, ...) are imported on first use, so
``pcgraph check`` stays fast; type checkers and editors see them through the ``TYPE_CHECKING``
block below, which ``_LAZY`` mirrors (``tests/test_public_api.py`` keeps the two equal).
"""

from __future__ import annotations

import importlib.metadata
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._diagnostics import Diagnostic as Diagnostic
from ._diagnostics import PcgError as PcgError
from ._errors import Error as Error
from ._feasibility import init_plan as init_plan
from ._feasibility import query_feasibility as query_feasibility
from ._format import format_model as format_model
from ._graph import graph_report as graph_report
from ._graph import to_graph as to_graph
from ._ir import EdgeIR as EdgeIR
from ._ir import EnergyIR as EnergyIR
from ._ir import ModelIR as ModelIR
from ._ir import NodeIR as NodeIR
from ._ir import ParamIR as ParamIR
from ._ir import PriorIR as PriorIR
from ._ir import QueryIR as QueryIR
from ._ir import SettingsIR as SettingsIR
from ._ir import Span as Span
from ._ir import TermIR as TermIR
from ._ir import TransformIR as TransformIR
from ._limits import Limits as Limits
from ._limits import limits as limits
from ._limits import set_limits as set_limits
from ._load import check as check
from ._load import load as load
from ._load import parse_model as parse_model
from ._shapes import ShapeError as ShapeError
from ._validate import validate as validate

try:
    __version__ = importlib.metadata.version("pcgraph")
except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

if TYPE_CHECKING:  # the engine (imports JAX): loaded on first use by __getattr__ below
    from . import data as data
    from ._alignment import Alignment as Alignment
    from ._alignment import bp_loss as bp_loss
    from ._alignment import update_alignment as update_alignment
    from ._analysis import QueryAnalysis as QueryAnalysis
    from ._analysis import analyse as analyse
    from ._analysis import analyse_query as analyse_query
    from ._binding import BindingError as BindingError
    from ._collapse import CollapseWarning as CollapseWarning
    from ._config import Config as Config
    from ._config import ConfigError as ConfigError
    from ._config import GradientDescent as GradientDescent
    from ._config import GradientFlow as GradientFlow
    from ._config import Initialisation as Initialisation
    from ._config import resolve_config as resolve_config
    from ._divergence import TrainingDiverged as TrainingDiverged
    from ._energy import ForwardError as ForwardError
    from ._energy import energy as energy
    from ._energy import node_energies as node_energies
    from ._energy import predictions as predictions
    from ._equilibrium import Equilibrium as Equilibrium
    from ._equilibrium import SingularSystemWarning as SingularSystemWarning
    from ._equilibrium import chain_equilibrated_energy as chain_equilibrated_energy
    from ._equilibrium import equilibrated_energy as equilibrated_energy
    from ._equilibrium import equilibrium as equilibrium
    from ._evaluate import Evaluator as Evaluator
    from ._evaluate import evaluate as evaluate
    from ._evaluate import inference_trace as inference_trace
    from ._fit import FitResult as FitResult
    from ._fit import TrainState as TrainState
    from ._fit import fit as fit
    from ._fit import fresh_carry as fresh_carry
    from ._precision import precision_optimizer as precision_optimizer
    from ._discrete import ClassResult as ClassResult
    from ._discrete import relax_classes as relax_classes
    from ._infer import InferResult as InferResult
    from ._infer import infer as infer
    from ._infer import relax as relax
    from ._init_plan import InitError as InitError
    from ._init import initialise as initialise
    from ._learn import EvalStep as EvalStep
    from ._learn import StepState as StepState
    from ._learn import TrainStep as TrainStep
    from ._learn import make_eval_step as make_eval_step
    from ._learn import make_train_step as make_train_step
    from ._network import Network as Network
    from ._network import build as build
    from ._plan import Stacking as Stacking
    from ._query import QueryPlan as QueryPlan
    from ._query import compile_query as compile_query
    from ._run import Run as Run
    from ._run import RunError as RunError
    from ._run import load_run as load_run
    from ._spectrum import Spectrum as Spectrum
    from ._spectrum import hessian_operator as hessian_operator
    from ._spectrum import hessian_spectrum as hessian_spectrum
    from ._theory import activity_hessian as activity_hessian
    from ._theory import condition_number as condition_number
    from ._theory import linear_equilibrium as linear_equilibrium

# name -> module that defines it (the TYPE_CHECKING block above, for the interpreter)
_LAZY = {
    "data": ".data",
    "Alignment": "._alignment",
    "bp_loss": "._alignment",
    "update_alignment": "._alignment",
    "QueryAnalysis": "._analysis",
    "analyse": "._analysis",
    "analyse_query": "._analysis",
    "BindingError": "._binding",
    "CollapseWarning": "._collapse",
    "Config": "._config",
    "ConfigError": "._config",
    "GradientDescent": "._config",
    "GradientFlow": "._config",
    "Initialisation": "._config",
    "resolve_config": "._config",
    "TrainingDiverged": "._divergence",
    "ForwardError": "._energy",
    "energy": "._energy",
    "node_energies": "._energy",
    "predictions": "._energy",
    "Equilibrium": "._equilibrium",
    "SingularSystemWarning": "._equilibrium",
    "chain_equilibrated_energy": "._equilibrium",
    "equilibrated_energy": "._equilibrium",
    "equilibrium": "._equilibrium",
    "Evaluator": "._evaluate",
    "evaluate": "._evaluate",
    "inference_trace": "._evaluate",
    "FitResult": "._fit",
    "TrainState": "._fit",
    "fit": "._fit",
    "fresh_carry": "._fit",
    "precision_optimizer": "._precision",
    "ClassResult": "._discrete",
    "relax_classes": "._discrete",
    "InferResult": "._infer",
    "infer": "._infer",
    "relax": "._infer",
    "InitError": "._init_plan",
    "initialise": "._init",
    "EvalStep": "._learn",
    "StepState": "._learn",
    "TrainStep": "._learn",
    "make_eval_step": "._learn",
    "make_train_step": "._learn",
    "Network": "._network",
    "build": "._network",
    "Stacking": "._plan",
    "QueryPlan": "._query",
    "compile_query": "._query",
    "Run": "._run",
    "RunError": "._run",
    "load_run": "._run",
    "Spectrum": "._spectrum",
    "hessian_operator": "._spectrum",
    "hessian_spectrum": "._spectrum",
    "activity_hessian": "._theory",
    "condition_number": "._theory",
    "linear_equilibrium": "._theory",
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
    "Diagnostic", "EdgeIR", "EnergyIR", "Error", "ModelIR", "NodeIR", "ParamIR", "PcgError",
    "PriorIR", "QueryIR", "SettingsIR", "ShapeError", "Span", "TermIR", "TransformIR",
    "check", "format_model", "graph_report", "init_plan", "load", "parse_model",
    "query_feasibility", "to_graph", "validate", "__version__", "Limits", "limits", "set_limits", *_LAZY,
]
