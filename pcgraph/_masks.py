"""Element masks for partial observations (``clamp NODE where MASK``) from a short spec, what
``pcgraph train --mask`` takes: one place for the kinds, their parsing and their arrays.

* ``half`` — the top half of each image observed, the bottom half missing (rows ``< H // 2`` of
  the last two axes of the data set's image shape);
* ``random:P`` — each element missing with probability ``P`` (``random`` alone: 0.5), a fresh
  draw per example from the run's seed;
* ``FILE.npy`` — one 0/1 array of the image's (or the node's) shape, the same for every example.

1 = observed (clamped), 0 = missing (relaxed), as everywhere in pcgraph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._errors import Error

MASK_HELP = ("element mask of the query's `clamp NODE where MASK` (1 = observed): half (the "
             "bottom half of each image missing), random:P (each element missing with "
             "probability P, default 0.5, drawn from --seed), or FILE.npy (one 0/1 array of the "
             "image's shape for every example)")


class MaskSpecError(Error, ValueError):
    """A ``--mask`` spec that names no known kind or a file that cannot be a mask."""


@dataclass(frozen=True)
class MaskSpec:
    kind: str  # "half" | "random" | "file"
    p_missing: float = 0.5
    path: str | None = None


def parse_mask(spec: str) -> MaskSpec:
    s = spec.strip()
    if s == "half":
        return MaskSpec("half")
    if s == "random" or s.startswith("random:"):
        p = s.partition(":")[2] or "0.5"
        try:
            q = float(p)
        except ValueError:
            q = math.nan
        if not 0.0 <= q <= 1.0:
            raise MaskSpecError(f"--mask {spec}: the missing fraction must be a number in [0, 1]")
        return MaskSpec("random", q)
    if s.endswith(".npy"):
        return MaskSpec("file", path=s)
    raise MaskSpecError(f"--mask {spec!r}: expected half, random:P or a FILE.npy")


def element_masks(spec: MaskSpec | str, n: int, image_shape: tuple[int, ...],
                  seed: int = 0, split: int = 0) -> np.ndarray:
    """``[n, *image_shape]`` float32 masks. ``split`` separates the random draws of the train,
    validation and test splits (the same seed gives the same masks for the same split)."""
    spec = parse_mask(spec) if isinstance(spec, str) else spec
    shape = tuple(int(d) for d in image_shape)
    if spec.kind == "half":
        if len(shape) < 2:
            side = math.isqrt(shape[0])
            if side * side != shape[0]:
                raise MaskSpecError(f"--mask half needs images; the data is {shape} vectors")
            return element_masks(spec, n, (side, side)).reshape(n, *shape)
        m = np.zeros(shape, np.float32)
        m[..., : shape[-2] // 2, :] = 1
        return np.broadcast_to(m, (n, *shape)).copy()
    if spec.kind == "random":
        rng = np.random.default_rng([seed, split, 0x6D61736B])
        return (rng.random((n, *shape)) >= spec.p_missing).astype(np.float32)
    path = Path(spec.path)
    try:
        a = np.load(path, allow_pickle=False)  # a data file never executes code
    except (OSError, ValueError) as e:
        raise MaskSpecError(f"--mask {path}: cannot read it: {e}") from None
    if a.size != math.prod(shape) or not np.isin(a, (0, 1)).all():
        raise MaskSpecError(f"--mask {path}: a mask must hold 0/1 values and have the image's "
                            f"{math.prod(shape)} elements (shape {shape}); it has shape {a.shape}")
    return np.broadcast_to(a.astype(np.float32).reshape(shape), (n, *shape)).copy()
