"""Size limits on what a model (and a training run) may ask for, checked before anything is
allocated. One place for every limit and its default.

A ``.pcg`` file is a description, not a program: a model that expands to more loop iterations,
nodes, edges, elements or parameters than these is refused with a positioned error, before the
memory is spent. Every default leaves room for every model in ``models/`` (the 128-layer,
width-512 ``resnet128`` included). To raise a limit:

* Python: ``with pcgraph.limits(max_nodes=2_000_000): pcgraph.load(...)``
  (or ``pcgraph.set_limits(...)`` for the rest of the process);
* command line: ``pcgraph --limit max_nodes=2000000 check FILE`` (repeatable);
* environment: ``PCGRAPH_LIMITS="max_nodes=2000000,max_params=5e9"``.

:func:`current` gives the limits in force (defaults, then the environment, then ``set_limits``,
then the innermost ``with limits(...)``).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Iterator

from ._errors import Error

__all__ = ["Limits", "LimitError", "current", "limits", "set_limits", "parse_assignments",
           "RAISE_HINT"]


@dataclass(frozen=True)
class Limits:
    """Every limit, with its default. Sizes are counts (elements, parameters) or bytes."""

    max_file_bytes: int = 64 * 2**20  # size of a .pcg file (each, includes too)
    max_include_depth: int = 32  # include chain a.pcg -> b.pcg -> ...
    max_nesting: int = 64  # for loops and block uses nested in one another
    max_expr_depth: int = 1000  # nesting of an expression (operators, parentheses)
    max_integer: int = 2**53  # magnitude of an integer (literal or computed)
    max_number_chars: int = 64  # characters of one number literal
    max_iterations: int = 1_000_000  # loop iterations in total, across nesting and block uses
    max_nodes: int = 1_000_000
    max_edges: int = 4_000_000  # energy and amortised edges
    max_node_elements: int = 2**24  # elements of one node (product of its shape)
    max_params: int = 2**31  # trainable parameters of the whole model
    max_steps: int = 100_000  # inference steps T (setting `steps`, --steps)
    max_epochs: int = 1_000_000
    max_batch_size: int = 2**20
    max_seed: int = 2**32 - 1
    memory_fraction: float = 0.9  # a training step may use this share of the available memory

    def replace(self, **changes) -> "Limits":
        unknown = [k for k in changes if k not in _FIELDS]
        if unknown:
            raise LimitError(f"unknown limit {unknown[0]!r}; known: {', '.join(_FIELDS)}")
        out = {}
        for k, v in changes.items():
            kind = _FIELDS[k]
            if isinstance(v, str):
                v = _parse_number(k, v)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0 \
                    or (isinstance(v, float) and not math.isfinite(v)):
                raise LimitError(f"limit {k} must be a positive number, got {v!r}")
            if kind is int and isinstance(v, float):
                if not v.is_integer():
                    raise LimitError(f"limit {k} must be an integer, got {v!r}")
                v = int(v)
            out[k] = v
        return dataclasses.replace(self, **out)


_FIELDS = {f.name: (int if f.default.__class__ is int else float)
           for f in dataclasses.fields(Limits)}

RAISE_HINT = ("raise it with `pcgraph --limit {name}=N ...`, PCGRAPH_LIMITS=\"{name}=N\" or "
              "`pcgraph.limits({name}=N)`")


class LimitError(Error, ValueError):
    """A limit was named or set wrongly (not: a model exceeds a limit; that is a diagnostic)."""


def _parse_number(name: str, s: str) -> float:
    try:
        v = float(s.strip().replace("_", ""))
    except ValueError:
        raise LimitError(f"limit {name}: {s!r} is not a number") from None
    return int(v) if v.is_integer() and abs(v) < 2**63 else v


def parse_assignments(items) -> dict[str, float]:
    """``["max_nodes=2e6", "a=1,b=2"]`` → ``{"max_nodes": 2000000, ...}`` (checked names)."""
    out: dict[str, float] = {}
    for item in items or ():
        for part in str(item).split(","):
            if not part.strip():
                continue
            k, sep, v = part.partition("=")
            k = k.strip()
            if not sep or not v.strip():
                raise LimitError(f"limit {part.strip()!r}: expected NAME=VALUE, e.g. max_nodes=2000000")
            if k not in _FIELDS:
                from ._diagnostics import did_you_mean

                hint = did_you_mean(k, _FIELDS) or "known: " + ", ".join(_FIELDS)
                raise LimitError(f"unknown limit {k!r}; {hint}")
            out[k] = _parse_number(k, v)
    return out


def _from_env() -> Limits:
    raw = os.environ.get("PCGRAPH_LIMITS", "")
    if not raw.strip():
        return Limits()
    try:
        return Limits().replace(**parse_assignments([raw]))
    except LimitError as e:
        raise LimitError(f"PCGRAPH_LIMITS: {e}") from None


_process: Limits | None = None
_scoped: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("pcgraph_limits",
                                                                      default=None)


def current() -> Limits:
    """The limits in force here."""
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    return _process if _process is not None else _from_env()


def set_limits(**changes) -> Limits:
    """Change limits for the rest of the process (``set_limits()`` with no argument resets them
    to the defaults and the environment). Returns the limits now in force."""
    global _process
    _process = None
    _process = current().replace(**changes) if changes else None
    return current()


@contextlib.contextmanager
def limits(**changes) -> Iterator[Limits]:
    """``with limits(max_nodes=2_000_000): ...`` raises (or lowers) limits inside the block."""
    token = _scoped.set(current().replace(**changes))
    try:
        yield _scoped.get()
    finally:
        _scoped.reset(token)


def exceeded(name: str, what: str) -> tuple[str, str]:
    """(message, hint) for ``what`` going over the limit ``name``."""
    value = getattr(current(), name)
    return f"{what}; the limit is {value:,} ({name})", RAISE_HINT.format(name=name)


# ------------------------------------------------------------------------------ training runs
# option spans of the API keywords; the command line relabels them with its flags
CLI_LABELS = {"init": "--init", "init_overrides": "--init-node", "init_options": "--init-option",
              "steps": "--steps", "epochs": "--epochs", "batch_size": "--batch-size",
              "seed": "--seed", "params": "--param"}
_BOUNDS = {"steps": ("max_steps", 0), "epochs": ("max_epochs", 1),
           "batch_size": ("max_batch_size", 1), "seed": ("max_seed", 0)}
FLOAT_BYTES = 4


def available_memory() -> int | None:
    """Bytes a training step can use on the default device: free accelerator memory when JAX
    already runs on one, else the host's available memory (None when unknown)."""
    import sys

    jax = sys.modules.get("jax")
    if jax is not None:
        try:
            dev = jax.devices()[0]
            if dev.platform != "cpu":
                st = dev.memory_stats() or {}
                if "bytes_limit" in st:
                    return int(st["bytes_limit"]) - int(st.get("bytes_in_use", 0))
        except Exception:  # noqa: BLE001 - no device information: fall back to the host
            pass
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def model_size(model) -> tuple[int, int]:
    """(trainable parameters, activity elements of one sample) of a model (IR)."""
    params, elements, _ = _sizes(model)
    return params, elements


def _sizes(model) -> tuple[int, int, int]:
    """(parameters, elements a sample: node activities plus the outputs of the transforms inside
    each chain (a conv's output before its pooling), conv patch elements a sample (output
    positions times input channels times k², what a convolution's gradient goes through))."""
    from ._shapes import conv_geometry, param_shapes, resolve_chain

    shapes = {n.name: tuple(n.shape) for n in model.nodes}
    params = 0
    elements = sum(math.prod(s) for s in shapes.values())
    patches = 0
    for e in (*model.edges, *model.amortised):
        if e.src not in shapes or e.dst not in shapes:
            continue
        for t in e.terms:
            steps = resolve_chain(t.chain, shapes[e.src], shapes[e.dst])
            for i, step in enumerate(steps):
                params += sum(math.prod(s) for s in param_shapes(step, t.bias).values())
                if i < len(steps) - 1:
                    elements += math.prod(step.out_shape)
                if step.kind in ("conv", "conv_transpose"):
                    k = conv_geometry(step.transform, step.in_shape)[0]
                    patches += math.prod(step.out_shape[1:]) * step.in_shape[0] * k * k
    return params, elements, patches


# copies of the parameters a step holds at once: parameters, two optimiser moments, as inputs and
# as outputs (no buffer is donated); arrays an activity element and sample: activity, prediction,
# error, gradient and the solver's copies; a convolution's patches: its forward pass and gradient
PARAM_COPIES, ACTIVITY_COPIES, PATCH_COPIES = 6, 6, 2


def step_bytes(model, batch_size: int) -> int:
    """The estimated memory of one training step, meant never to be below what it takes:
    ``PARAM_COPIES`` copies of the parameters, ``ACTIVITY_COPIES`` arrays for every activity
    element (node or intermediate) of every sample of the batch, and ``PATCH_COPIES`` of the
    patches of every convolution. Compared with XLA's own account of compiled steps (``memory_analysis``) in
    ``benchmarks/step_memory.py``: between 1.0 and 2.5 times it on the models measured."""
    params, elements, patches = _sizes(model)
    return FLOAT_BYTES * (PARAM_COPIES * params
                          + batch_size * (ACTIVITY_COPIES * elements + PATCH_COPIES * patches))


def training_diagnostics(model, *, steps=None, epochs=None, batch_size=None, seed=None,
                         available: int | None = None):
    """Problems of a training run's numbers, found before anything is allocated: steps, epochs,
    batch size and seed within their limits, and the estimated memory of a step within
    ``memory_fraction`` of the available memory. Diagnostics are labelled by the option
    (``steps``, ``batch_size``); the command line relabels them with its flags."""
    from ._diagnostics import Diagnostic, option_span

    lim = current()
    out = []
    values = {"steps": steps, "epochs": epochs, "batch_size": batch_size, "seed": seed}
    for key, value in values.items():
        if value is None:
            continue
        name, low = _BOUNDS[key]
        if isinstance(value, bool) or not isinstance(value, int):
            out.append(Diagnostic("error", f"{key} must be an integer, got {value!r}",
                                  option_span(key), code="bad-value"))
        elif value < low:
            out.append(Diagnostic("error", f"{key} must be >= {low}, got {value}",
                                  option_span(key), code="bad-value"))
        elif value > getattr(lim, name):
            msg, hint = exceeded(name, f"{key} is {value:,}")
            out.append(Diagnostic("error", msg, option_span(key), hint, "limit"))
    if out or batch_size is None:
        return out
    try:
        need = step_bytes(model, int(batch_size))
    except Exception:  # noqa: BLE001 - shapes the validator reports; nothing to estimate
        return out
    free = available if available is not None else available_memory()
    if free is not None and need > lim.memory_fraction * free:
        gib = 2**30
        params, elements, patches = _sizes(model)
        per_sample = ACTIVITY_COPIES * elements + PATCH_COPIES * patches
        fit = int((lim.memory_fraction * free / FLOAT_BYTES - PARAM_COPIES * params)
                  // per_sample) if per_sample else 0
        hint = (f"use a smaller batch (at most about {fit} fits)" if fit >= 1
                else "the parameters alone do not fit; make the model smaller")
        hint += (f", or raise memory_fraction ({lim.memory_fraction}) if the estimate is too "
                 "cautious: " + RAISE_HINT.format(name="memory_fraction"))
        out.append(Diagnostic(
            "error", f"a training step needs about {need / gib:.3g} GiB ({params:,} parameters, "
            f"{elements:,} activity elements a sample, batch {batch_size}) but {free / gib:.3g} "
            f"GiB is available", option_span("batch_size"), hint, "out-of-memory"))
    return out


def check_training(model, config, seed=None) -> None:
    """Raise ``PcgError`` with :func:`training_diagnostics` of a resolved config, if any."""
    from ._diagnostics import PcgError

    bad = training_diagnostics(model, steps=config.get("steps"), epochs=config.get("epochs"),
                               batch_size=config.get("batch_size"), seed=seed)
    if bad:
        raise PcgError(bad)
