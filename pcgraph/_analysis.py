"""Analysis of a network on a batch (DESIGN §5; docs/theory.md): what ``pcgraph analyse`` reports.

:func:`analyse` — for one query on one batch: per-node energy at initialisation and after T
inference steps, the activity Hessian's extremes and condition number (``_spectrum``), the cosine
between the PC weight update and the BP gradient (``_alignment``), and for linear graphs the
equilibrated energy (``_equilibrium``). The CLI command and this function share the name; the
graph-topology report that ``pcgraph.analyse(model)`` used to return is
:func:`pcgraph.graph_report`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import jax

from ._alignment import Alignment, update_alignment
from ._config import GradientDescent, Inference, Initialisation, resolve_config, with_steps
from ._energy import node_energies
from ._equilibrium import Equilibrium, equilibrium, is_linear
from ._infer import infer
from ._ir import ModelIR
from ._network import Network
from ._plan import Acts
from ._query import QueryPlan, compile_query
from ._spectrum import Spectrum, hessian_spectrum
from ._theory import batch_acts, batch_size


@dataclass(frozen=True)
class QueryAnalysis:
    """What :func:`analyse` measured on one query and batch (``as_dict`` for JSON)."""

    query: str
    batch_size: int
    init: str
    inference: str
    steps: int
    energy_init: dict
    energy_end: dict
    hessian: Spectrum | None = None
    hessian_at: str = "end"
    alignment: Alignment | None = None
    linear: bool = False
    equilibrium: Equilibrium | None = None
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    extra: dict = field(default_factory=dict)

    @property
    def total_init(self) -> float:
        return float(sum(self.energy_init.values()))

    @property
    def total_end(self) -> float:
        return float(sum(self.energy_end.values()))

    def as_dict(self) -> dict:
        return {
            "query": self.query, "batch_size": self.batch_size, "init": self.init,
            "inference": self.inference, "steps": self.steps,
            "energy_init": self.energy_init, "energy_end": self.energy_end,
            "total_init": self.total_init, "total_end": self.total_end,
            "hessian_at": self.hessian_at,
            "hessian": None if self.hessian is None else self.hessian.as_dict(),
            "alignment": None if self.alignment is None else self.alignment.as_dict(),
            "linear": self.linear,
            "equilibrium": None if self.equilibrium is None else self.equilibrium.as_dict(),
            "notes": list(self.notes), "warnings": list(self.warnings),
        }


def _initial(net: Network, q: QueryPlan, h: Acts, init: Initialisation | None, key):
    from ._init import initialise

    name = (init.method if init is not None else None) or _setting(net, "init")
    try:
        return initialise(net, q, h, init, key=key), str(name), None
    except (ValueError, TypeError) as e:  # a stateful initialiser (mem, avg, null) needs training
        zero = Initialisation("zero", nodes={n: "zero" for n in q.free_names})
        h0 = initialise(net, q, h, zero, key=key)
        return h0, "zero", (f"init {name!r} could not run outside training "
                            f"({str(e).splitlines()[0]}); analysed from zero")


def _setting(net: Network, name: str):
    return net.plan.settings.get(name)


def _describe(inf: Inference) -> str:
    if isinstance(inf, GradientDescent):
        return "gd"
    return type(inf.solver).__name__.lower() + (" (adaptive)" if inf.adaptive else
                                                f" (dt {inf.dt:g})")


def analyse(net: Network, query=None, batch: Mapping[str, Any] | Acts | None = None, *,
            inference: Inference | None = None, steps: int | None = None,
            init: Initialisation | None = None, key=None, spectrum: bool = True,
            hessian_at: str = "end", method: str = "auto", tol: float = 1e-6,
            maxiter: int | None = None, ncv: int | None = None,
            alignment: bool = True) -> QueryAnalysis:
    """Analyse ``query`` on ``batch`` (``{node: array}`` for the clamped nodes): one query of what
    ``pcgraph analyse FILE`` prints.

    Per node energy (batch mean) at initialisation (``init``, an ``Initialisation``; default the
    model's policy) and after inference (``inference``, a ``GradientDescent`` or
    ``GradientFlow``; default the model's settings; ``steps`` overrides its step count); the
    activity Hessian's extremes and condition number at ``hessian_at`` (``"init"`` or ``"end"``);
    the cosine of the PC weight gradient with the BP gradient (queries with a forward pass and a
    clamped target); for linear graphs the equilibrium (``F*``, singularity)."""
    if isinstance(net, ModelIR):  # the old graph report: pcgraph.analyse(model) until 0.x
        from ._graph import graph_report

        warnings.warn("pcgraph.analyse(model) is now pcgraph.graph_report(model); "
                      "pcgraph.analyse(net, query, batch) analyses a built network on a batch",
                      DeprecationWarning, stacklevel=2)
        return graph_report(net)
    if query is None or batch is None:
        raise TypeError("analyse(net, query, batch): pass the query (a name) and the batch "
                        "({node: array} for its clamped nodes)")
    if hessian_at not in ("init", "end"):
        raise ValueError(f"hessian_at must be 'init' or 'end', got {hessian_at!r}")
    q = query if isinstance(query, QueryPlan) else compile_query(net, query)
    inf = resolve_config(net.plan.settings).inference if inference is None else inference
    if steps is not None:
        inf = with_steps(inf, steps)
    key = jax.random.PRNGKey(0) if key is None else key
    notes: list[str] = []
    warns: list[str] = []
    h = batch_acts(net, q, batch)
    h0, init_used, note = _initial(net, q, h, init, key)
    if note:
        notes.append(note)
    hT = infer(net, q, h0, inf).h
    e0 = {k: float(v) for k, v in node_energies(net, h0, q).items()}
    e1 = {k: float(v) for k, v in node_energies(net, hT, q).items()}
    linear = is_linear(net)
    spec = None
    if spectrum and q.free_groups:
        spec = hessian_spectrum(net, q, h0 if hessian_at == "init" else hT, method=method,
                                tol=tol, maxiter=maxiter, ncv=ncv)
        if not spec.converged:
            warns.append(f"Lanczos did not converge in {spec.matvecs} products (residual of "
                         f"λ_min {spec.residual:.2g}); λ_min is an upper bound, cond a lower "
                         "bound (raise --maxiter or --tol)")
    elif not q.free_groups:
        notes.append("no inference variables: no activity Hessian")
    align = None
    if alignment:
        try:
            align = update_alignment(net, q, batch if isinstance(batch, Mapping) else h, hT)
        except ValueError as e:  # ForwardError is a ValueError
            notes.append(f"no BP comparison: {str(e).splitlines()[0]}")
    eq = None
    if linear and q.free_groups:
        eq = equilibrium(net, q, h, method=method, warn=False)
        if eq.singular:
            warns.append(eq.message)
    return QueryAnalysis(q.name, batch_size(h), init_used, _describe(inf), int(inf.steps), e0,
                         e1, spec, hessian_at, align, linear, eq, tuple(notes), tuple(warns))


def analyse_query(*args, **kwargs) -> QueryAnalysis:
    """Deprecated: the old name of :func:`analyse`."""
    warnings.warn("pcgraph.analyse_query is now pcgraph.analyse (the name of the command)",
                  DeprecationWarning, stacklevel=2)
    return analyse(*args, **kwargs)
