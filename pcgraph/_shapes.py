"""Shape rules of edge transforms (pure Python, no JAX).

Shapes are per sample (no batch axis): a vector ``(784,)``, an image ``(C, H, W)``. The validator uses
these rules to report mismatches; the network builder uses them to size parameters, so both agree.

A chain ``t1 |> t2 |> ... |> tk`` maps the source shape to the target shape. A parametric transform
(``dense``, ``conv``, ``conv_transpose``) that is not given its output size takes it from the
target: ``dense`` as the last transform produces exactly the target shape (reshaping if the target
is a tensor); ``conv``/``conv_transpose`` take the target's channels when only
shape-preserving-in-channels transforms (pooling, upsampling, identity) follow. Elsewhere they need
``out=``.

Spatial sizes: ``conv`` ``(H + 2p − k) // s + 1``; ``conv_transpose`` (the adjoint of that conv)
``(H − 1)·s − 2p + k``; ``upsample(f)`` (nearest neighbour) ``f·H``; pooling ``(H − w) // s + 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ._errors import Error
from ._ir import TransformIR

PARAMETRIC = frozenset({"dense", "conv", "conv_transpose"})
TRANSFORMS = frozenset({"dense", "conv", "conv_transpose", "identity", "maxpool", "avgpool",
                        "upsample", "flatten"})
# which keyword arguments each transform accepts (positional ones are listed first, in order)
TRANSFORM_ARGS: dict[str, tuple[str, ...]] = {
    "dense": ("out",),
    "conv": ("kernel", "stride", "padding", "out"),
    "conv_transpose": ("kernel", "stride", "padding", "out"),
    "identity": (),
    "maxpool": ("window", "stride"),
    "avgpool": ("window", "stride"),
    "upsample": ("factor",),
    "flatten": (),
}
_CHANNEL_PRESERVING = frozenset({"identity", "maxpool", "avgpool", "upsample"})
_CONVS = frozenset({"conv", "conv_transpose"})


class ShapeError(Error, ValueError):
    """A transform cannot map the shape it receives; ``transform`` is the culprit."""

    def __init__(self, message: str, transform: TransformIR | None = None, hint: str | None = None):
        super().__init__(message)
        self.transform = transform
        self.hint = hint


@dataclass(frozen=True)
class Step:
    """One resolved transform of a chain with its input and output shapes."""

    transform: TransformIR
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]

    @property
    def kind(self) -> str:
        return self.transform.kind


def arg(t: TransformIR, name: str, default=None):
    """Keyword ``name`` of ``t``, falling back to its positional argument at that index."""
    v = t.get(name)
    if v is not None:
        return v
    names = TRANSFORM_ARGS.get(t.kind, ())
    if name in names:
        i = names.index(name)
        if i < len(t.posargs):
            return t.posargs[i]
    return default


def _int_arg(t: TransformIR, name: str, default):
    v = arg(t, name, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ShapeError(f"{t.kind}: {name} must be a non-negative integer, got {v!r}", t)
    return v


def conv_geometry(t: TransformIR, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(kernel, stride, padding) of a conv or conv_transpose transform, ``padding = same``
    resolved."""
    k = _int_arg(t, "kernel", 3)
    s = _int_arg(t, "stride", 1)
    p = arg(t, "padding", 0)
    if p == "same":
        if s != 1:
            raise ShapeError(f"{t.kind}: padding = same needs stride = 1", t)
        if k % 2 == 0:
            raise ShapeError(f"{t.kind}: padding = same needs an odd kernel", t)
        p = k // 2
    elif isinstance(p, bool) or not isinstance(p, int) or p < 0:
        raise ShapeError(f"{t.kind}: padding must be a non-negative integer or same, got {p!r}", t)
    if k < 1 or s < 1:
        raise ShapeError(f"{t.kind}: kernel and stride must be at least 1", t)
    if t.kind == "conv_transpose" and p > k - 1:
        raise ShapeError(f"conv_transpose: padding must be at most kernel - 1 = {k - 1}, got {p}",
                         t)
    return k, s, p


def upsample_factor(t: TransformIR) -> int:
    f = _int_arg(t, "factor", 2)
    if f < 1:
        raise ShapeError("upsample: factor must be at least 1", t)
    return f


def pool_geometry(t: TransformIR) -> tuple[int, int]:
    w = _int_arg(t, "window", 2)
    s = _int_arg(t, "stride", w)
    if w < 1 or s < 1:
        raise ShapeError(f"{t.kind}: window and stride must be at least 1", t)
    return w, s


def _need_image(t: TransformIR, shape: tuple[int, ...]) -> None:
    if len(shape) != 3:
        raise ShapeError(
            f"{t.kind} needs an image input [C,H,W], got {list(shape)}",
            t,
            hint="give the node a shape like [1,28,28]",
        )


def resolve_chain(
    chain: tuple[TransformIR, ...], in_shape: tuple[int, ...], target: tuple[int, ...]
) -> tuple[Step, ...]:
    """Resolve every transform's shapes; raise ShapeError if the chain cannot reach ``target``."""
    steps: list[Step] = []
    shape = tuple(in_shape)
    for i, t in enumerate(chain):
        rest = chain[i + 1 :]
        last = not rest
        if t.kind not in TRANSFORMS:
            raise ShapeError(f"unknown transform {t.kind!r}", t)
        if t.kind == "identity":
            out = shape
        elif t.kind == "flatten":
            out = (math.prod(shape),)
        elif t.kind == "dense":
            if len(shape) != 1:
                raise ShapeError(
                    f"dense needs a vector input, got {list(shape)}",
                    t,
                    hint="insert flatten before dense: `flatten |> dense`",
                )
            n = arg(t, "out")
            if n is None:
                if not last:
                    raise ShapeError("dense in the middle of a chain needs out=N", t)
                out = tuple(target)
            else:
                if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                    raise ShapeError(f"dense: out must be a positive integer, got {n!r}", t)
                out = (n,)
        elif t.kind in _CONVS:
            _need_image(t, shape)
            k, s, p = conv_geometry(t, shape)
            c = arg(t, "out")
            if c is None:
                if all(r.kind in _CHANNEL_PRESERVING for r in rest) and len(target) == 3:
                    c = target[0]
                else:
                    raise ShapeError(f"{t.kind} here needs out=CHANNELS", t)
            if isinstance(c, bool) or not isinstance(c, int) or c < 1:
                raise ShapeError(f"{t.kind}: out must be a positive integer, got {c!r}", t)
            if t.kind == "conv":
                h = (shape[1] + 2 * p - k) // s + 1
                w = (shape[2] + 2 * p - k) // s + 1
            else:  # the adjoint of a conv with the same kernel, stride and padding
                h = (shape[1] - 1) * s - 2 * p + k
                w = (shape[2] - 1) * s - 2 * p + k
            if h < 1 or w < 1:
                raise ShapeError(f"{t.kind} kernel {k} does not fit input {list(shape)}", t)
            out = (int(c), h, w)
        elif t.kind == "upsample":
            _need_image(t, shape)
            f = upsample_factor(t)
            out = (shape[0], shape[1] * f, shape[2] * f)
        else:  # maxpool / avgpool
            _need_image(t, shape)
            w_, s = pool_geometry(t)
            h = (shape[1] - w_) // s + 1
            w = (shape[2] - w_) // s + 1
            if h < 1 or w < 1:
                raise ShapeError(f"{t.kind} window {w_} does not fit input {list(shape)}", t)
            out = (shape[0], h, w)
        steps.append(Step(t, shape, out))
        shape = out
    if tuple(shape) != tuple(target):
        culprit = chain[-1] if chain else None
        raise ShapeError(
            f"edge produces shape {list(shape)} but the target node has shape {list(target)}",
            culprit,
            hint=_mismatch_hint(chain, in_shape, target),
        )
    return tuple(steps)


def _mismatch_hint(chain, in_shape, target) -> str | None:
    kinds = [t.kind for t in chain]
    if kinds == ["identity"]:
        return "an identity edge needs equal shapes; use dense to change the size"
    if len(in_shape) == 3 and len(target) == 1 and "flatten" not in kinds:
        return "flatten the image first: `flatten |> dense`"
    return None


def param_shapes(step: Step, bias: bool) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of one resolved transform: ``W`` (and ``b`` if ``bias``) or nothing."""
    if step.kind == "dense":
        n_in = step.in_shape[0]
        n_out = math.prod(step.out_shape)
        shapes = {"W": (n_in, n_out)}
        if bias:
            shapes["b"] = (n_out,)
        return shapes
    if step.kind in _CONVS:
        k, _, _ = conv_geometry(step.transform, step.in_shape)
        shapes = {"W": (step.out_shape[0], step.in_shape[0], k, k)}
        if bias:
            shapes["b"] = (step.out_shape[0],)
        return shapes
    return {}


def fan_in(step: Step) -> int:
    """Number of inputs each output unit sees (for initialisation and μPC scalings)."""
    if step.kind == "dense":
        return step.in_shape[0]
    if step.kind == "conv":
        k, _, _ = conv_geometry(step.transform, step.in_shape)
        return step.in_shape[0] * k * k
    if step.kind == "conv_transpose":  # each output sees about (k / stride)² input positions
        k, s, _ = conv_geometry(step.transform, step.in_shape)
        return max(1, step.in_shape[0] * k * k // (s * s))
    return 1
