"""The engine's configuration objects, and the ONE function that builds them from settings.

Strings live where people type (``.pcg`` settings, CLI flags); the engine takes objects:

* :class:`GradientDescent` — ``steps`` optimiser steps (any optax transformation) on the free
  activities inside one ``lax.scan``; :class:`GradientFlow` — the gradient flow
  ``dh/dt = −∇_h F`` solved by a diffrax solver with a step-size controller and a steady-state
  event. Every function that relaxes activities takes one of them whole (``inference=``).
* :class:`Initialisation` — the activity initialisation: a method for every free node (None: the
  model's own policy, per query / node / ``init`` setting), per-node overrides and the
  initialisers' options (``_registry.INIT_OPTIONS``).
* the weight optimiser — an ``optax.GradientTransformation``.
* :class:`Config` — the three above plus ``algorithm``, ``epochs`` and ``batch_size``: what ``fit``
  runs, and ``record`` (the flat, JSON-able settings that produced it, for checkpoints).

:func:`resolve_config` is the only place where settings become objects: the CLI calls it once per
run with its flags, ``fit`` once when given no ``Config``. Defaults come from ``_registry``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Union

import diffrax
import optax

from ._errors import Error
from ._registry import (
    PRECISIONS,
    ACTIVITY_SCALES,
    ALGORITHMS,
    DEFAULT_SETTINGS,
    INIT_OPTIONS,
    MOMENTUM,
    SETTINGS,
    SOLVERS,
)


class ConfigError(Error, ValueError):
    """A setting or option that names nothing pcgraph knows, or is out of range."""


def _known(kind: str, name: Any, known) -> None:
    if name not in known:
        from ._diagnostics import did_you_mean

        hint = did_you_mean(str(name), known) if isinstance(name, str) else None
        raise ConfigError(f"unknown {kind} {name!r}" + (f"; {hint}" if hint else "")
                          + f". Known: {', '.join(known)}")


def _scale_ok(activity_scale: str) -> None:
    if activity_scale not in ACTIVITY_SCALES:
        raise ConfigError(f"activity_scale must be one of {ACTIVITY_SCALES}, "
                          f"got {activity_scale!r}")


# ------------------------------------------------------------------------------ optimisers
def activity_optimizer(name: str, lr: float) -> optax.GradientTransformation:
    """The optax optimiser named by the ``activity_optimizer`` setting."""
    _known("activity optimizer", name, SETTINGS["activity_optimizer"].choices)
    return {
        "sgd": lambda: optax.sgd(lr),
        "momentum": lambda: optax.sgd(lr, momentum=MOMENTUM),
        "adam": lambda: optax.adam(lr),
        "adamw": lambda: optax.adamw(lr),
        "rmsprop": lambda: optax.rmsprop(lr),
    }[name]()


def weight_optimizer(name: str, lr: float, weight_decay: float = 0.0) -> optax.GradientTransformation:
    """The optax optimiser named by the ``weight_optimizer`` / ``weight_lr`` / ``weight_decay``
    settings (``adam`` with a decay is AdamW; SGD decays by ``add_decayed_weights``)."""
    _known("weight optimizer", name, SETTINGS["weight_optimizer"].choices)
    lr, wd = float(lr), float(weight_decay)
    if name in ("adam", "adamw"):
        return optax.adamw(lr, weight_decay=wd) if (wd > 0 or name == "adamw") else optax.adam(lr)
    opt = optax.sgd(lr, momentum=MOMENTUM if name == "momentum" else None)
    return optax.chain(optax.add_decayed_weights(wd), opt) if wd > 0 else opt


def _default_activity_optimizer() -> optax.GradientTransformation:
    return activity_optimizer(DEFAULT_SETTINGS["activity_optimizer"], DEFAULT_SETTINGS["activity_lr"])


# ------------------------------------------------------------------------------ inference
@dataclass(frozen=True)
class GradientDescent:
    """Relax the free activities by ``steps`` steps of ``optimizer`` (an optax transformation;
    default plain SGD at the default activity learning rate) in one ``lax.scan``.

    ``tol > 0`` stops early once ``‖∇_h F‖ < tol`` (shapes stay static). ``activity_scale``:
    ``"sample"`` steps on the per-sample energy (``B·∇_h F``, PCX's convention), ``"batch"`` on
    the batch mean (JPC's)."""

    steps: int = DEFAULT_SETTINGS["steps"]
    optimizer: optax.GradientTransformation = field(default_factory=_default_activity_optimizer)
    tol: float = 0.0
    activity_scale: str = "sample"

    def __post_init__(self):
        if int(self.steps) < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")
        _scale_ok(self.activity_scale)


@dataclass(frozen=True)
class GradientFlow:
    """Integrate ``dh/dt = −∇_h F`` with ``solver`` (a diffrax solver) from 0 to ``t1`` (default
    ``steps·dt``), with ``stepsize_controller`` (default constant steps of ``dt``; a
    ``diffrax.PIDController`` for adaptive steps, not with Euler). ``steady_state`` stops the
    solve once ``‖∇_h F‖ < ss_atol + ss_rtol·‖h‖`` (with adaptive steps these must sit above the
    controller's noise floor). ``max_steps`` defaults to what ``t1/dt`` needs (4096 adaptive).
    Euler with ``dt`` = the activity learning rate is exactly plain gradient descent."""

    solver: diffrax.AbstractSolver = field(default_factory=diffrax.Heun)
    dt: float = DEFAULT_SETTINGS["activity_lr"]
    steps: int = DEFAULT_SETTINGS["steps"]
    t1: float | None = None
    max_steps: int | None = None
    stepsize_controller: diffrax.AbstractStepSizeController = field(
        default_factory=diffrax.ConstantStepSize)
    steady_state: bool = True
    ss_rtol: float = 1e-3
    ss_atol: float = 1e-5
    activity_scale: str = "sample"

    def __post_init__(self):
        _scale_ok(self.activity_scale)
        if self.adaptive and isinstance(self.solver, diffrax.Euler):
            raise ConfigError("Euler has no error estimate: use Heun or Tsit5 with adaptive steps")

    @property
    def adaptive(self) -> bool:
        return not isinstance(self.stepsize_controller, diffrax.ConstantStepSize)


Inference = Union[GradientDescent, GradientFlow]
ODE_SOLVERS = {"euler": diffrax.Euler, "heun": diffrax.Heun, "tsit5": diffrax.Tsit5}


def with_steps(inference: Inference, steps: int) -> Inference:
    """The same inference with ``steps`` steps (a longer relaxation, e.g. a reference one)."""
    return dataclasses.replace(inference, steps=int(steps))


# ------------------------------------------------------------------------------ initialisation
def _pairs(d) -> tuple:
    def fr(v):
        return tuple(v) if isinstance(v, list) else v

    items = d.items() if isinstance(d, Mapping) else (d or ())
    return tuple(sorted((str(k), fr(v)) for k, v in items))


@dataclass(frozen=True)
class Initialisation:
    """How the free activities start: ``method`` for every free node (None: the model's policy —
    the query's and the node's ``init``, then the ``init`` setting), ``nodes`` (``{node: method}``,
    winning over everything) and ``options`` (``{option: value}``, see ``_registry.INIT_OPTIONS``).
    Mappings are stored as sorted tuples, so the object is hashable."""

    method: str | None = None
    nodes: Any = ()
    options: Any = ()

    def __post_init__(self):
        object.__setattr__(self, "nodes", _pairs(self.nodes))
        object.__setattr__(self, "options", _pairs(self.options))

    @property
    def overrides(self) -> dict[str, str]:
        return dict(self.nodes)

    @property
    def option_values(self) -> dict[str, Any]:
        """Every option, the defaults filled in."""
        return {**INIT_OPTIONS, **dict(self.options)}

    def replace(self, **changes) -> "Initialisation":
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------ precision
def precision_dtype(precision: str):
    """The storage dtype of the ``precision`` setting: ``fp32`` → None (JAX's default float:
    float32, float64 under ``jax.enable_x64``), ``bf16`` → bfloat16 (weights and activities; the
    energies and the matmuls' accumulation stay in float32, ``_energy``/``_kernels``)."""
    import jax.numpy as jnp

    _known("precision", precision, PRECISIONS)
    return jnp.bfloat16 if precision == "bf16" else None


# ------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class Config:
    """Everything a training run needs besides the network, the data and the seed."""

    inference: Inference = field(default_factory=GradientDescent)
    init: Initialisation = field(default_factory=Initialisation)
    weight_optimizer: optax.GradientTransformation = field(
        default_factory=lambda: weight_optimizer(DEFAULT_SETTINGS["weight_optimizer"],
                                                 DEFAULT_SETTINGS["weight_lr"]))
    algorithm: str = "pc"
    epochs: int = DEFAULT_SETTINGS["epochs"]
    batch_size: int = DEFAULT_SETTINGS["batch_size"]
    #: the resolved settings as plain values (what a checkpoint records and compares)
    record: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self):
        _known("algorithm", self.algorithm, ALGORITHMS)


def inference_from(solver: str, steps: int, activity_lr: float,
                   optimizer: str | optax.GradientTransformation) -> Inference:
    """``gd`` → :class:`GradientDescent`; ``euler`` / ``heun`` / ``tsit5`` → :class:`GradientFlow`
    with ``dt`` = the activity learning rate (the settings' meaning of these names)."""
    _known("solver", solver, SOLVERS)
    if solver == "gd":
        opt = (optimizer if isinstance(optimizer, optax.GradientTransformation)
               else activity_optimizer(optimizer, float(activity_lr)))
        return GradientDescent(steps=int(steps), optimizer=opt)
    return GradientFlow(solver=ODE_SOLVERS[solver](), dt=float(activity_lr), steps=int(steps))


def resolve_config(settings: Any = None, *, algorithm: str | None = None,
                   init_nodes: Mapping[str, str] | None = None,
                   init_options: Mapping[str, Any] | None = None, **overrides: Any) -> Config:
    """THE resolution of settings into a :class:`Config` (see the module docstring).

    ``settings``: a model's ``SettingsIR`` (or a ``{name: value}`` mapping, or None for the
    defaults); ``overrides``: settings by name (``steps=5``, ``solver="heun"``, ...; None keeps
    the model's). ``weight_optimizer`` and ``activity_optimizer`` may also be optax
    transformations. ``algorithm`` is pc | ipc | bp; ``init_nodes`` / ``init_options`` complete
    the :class:`Initialisation`."""
    s = dict(DEFAULT_SETTINGS)
    if settings is not None:
        s.update(settings.as_dict() if hasattr(settings, "as_dict") else dict(settings))
    objects = {}
    for k, v in overrides.items():
        _known("setting", k, tuple(SETTINGS))
        if isinstance(v, optax.GradientTransformation):
            objects[k] = v  # an optimiser object: the record keeps the setting's name
        elif v is not None:
            s[k] = v
    for k in ("epochs", "batch_size"):
        s[k] = int(s[k] or DEFAULT_SETTINGS[k])
    algorithm = algorithm or "pc"
    _known("algorithm", algorithm, ALGORITHMS)
    s["algorithm"] = algorithm
    inference = inference_from(s["solver"], s["steps"], s["activity_lr"],
                               objects.get("activity_optimizer", s["activity_optimizer"]))
    wopt = objects.get("weight_optimizer") or weight_optimizer(
        s["weight_optimizer"], s["weight_lr"], s["weight_decay"])
    init = Initialisation(overrides.get("init"), init_nodes or (), init_options or ())
    return Config(inference=inference, init=init, weight_optimizer=wopt, algorithm=algorithm,
                  epochs=s["epochs"], batch_size=s["batch_size"], record=s)
