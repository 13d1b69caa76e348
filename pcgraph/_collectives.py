"""What crosses the wire: the collectives of a compiled, SPMD-partitioned training step, read from
its HLO text (:func:`collectives`, :func:`collective_summary`), and the step compiled from
abstract arrays on a mesh without running it (:func:`compiled_step_hlo`). Used by
benchmarks/scaling.py and tests/test_sharding.py."""

from __future__ import annotations

import re

import equinox as eqx
import jax
import numpy as np

# ------------------------------------------------------------------------------ HLO accounting
_COLLECTIVES = ("all-reduce", "all-gather", "collective-permute", "all-to-all", "reduce-scatter")
_OP = re.compile(r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+(" + "|".join(_COLLECTIVES)
                 + r")(?:-start)?\(")
_SHAPE = re.compile(r"\b(pred|[subf]\d+|bf16|f8\w*)\[([\d,]*)\]")
_BYTES = {"pred": 1, "bf16": 2}
_WHILE = re.compile(r"\bwhile\(.*?body=%?([\w.\-]+)")
_CALLS = re.compile(r"(?:calls|body|condition|branch_computations|to_apply)=\{?%?([\w.\-, %]+)\}?")
_TRIP = re.compile(r'"known_trip_count"\s*:\s*\{\s*"n"\s*:\s*"(\d+)"')


def _bytes_of(type_text: str) -> int:
    total = 0
    for dt, dims in _SHAPE.findall(type_text):
        size = _BYTES.get(dt) or max(1, int(re.sub(r"\D", "", dt) or 8) // 8)
        n = 1
        for d in filter(None, dims.split(",")):
            n *= int(d)
        total += size * n
    return total


def _computations(hlo: str) -> tuple[dict[str, list[str]], str | None]:
    """``({computation: its instruction lines}, the entry computation)``."""
    comps: dict[str, list[str]] = {}
    name = entry = None
    for line in hlo.splitlines():
        m = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
        if m and not line.startswith(" "):
            name = m.group(2)
            comps[name] = []
            if m.group(1):
                entry = name
        elif name is not None:
            comps[name].append(line)
    return comps, entry


def collectives(hlo: str) -> list[dict]:
    """The collectives of a compiled (SPMD-partitioned) HLO module text, one record each:
    ``op``, ``bytes`` (of its result, per device), ``loop`` (the trip count of the innermost
    ``while`` whose body runs it, e.g. the inference scan's T; None outside loops), ``shape``."""
    comps, entry = _computations(hlo)
    # which computations run inside which while body (transitively through calls)
    trip_of: dict[str, int | None] = {}

    def callees(c):
        out = []
        for line in comps.get(c, ()):
            for m in _CALLS.finditer(line):
                out.extend(x.strip().lstrip("%") for x in m.group(1).split(","))
        return [x for x in out if x in comps]

    def mark(c, trip, seen):
        if c in seen:
            return
        seen.add(c)
        trip_of[c] = trip
        for line in comps.get(c, ()):
            w = _WHILE.search(line)
            t = _TRIP.search(line)
            if w:
                mark(w.group(1), int(t.group(1)) if t else -1, seen)
        for d in callees(c):
            if d not in seen:
                mark(d, trip, seen)

    if entry is not None:
        mark(entry, None, set())
    out = []
    for c, lines in comps.items():
        for line in lines:
            m = _OP.match(line)
            if m:
                out.append({"op": m.group(2), "bytes": _bytes_of(m.group(1)),
                            "shape": m.group(1).strip(), "loop": trip_of.get(c)})
    return out


def collective_summary(records: list[dict]) -> dict:
    """``{"per_inference_step": {op: [count, bytes]}, "per_step_outside": {...},
    "bytes_per_step": total}``: collectives inside the innermost loop's body (the inference scan
    is unrolled by ``_infer.scan_unroll(T)``, so one body holds that many inference steps) and
    outside it (once per training step), and the bytes one training step moves per device
    (loop collectives times their trip count)."""
    inner = {r["loop"] for r in records if r["loop"] not in (None, -1)}
    per_inf: dict = {}
    outside: dict = {}
    total = 0
    for r in records:
        target = per_inf if r["loop"] is not None else outside
        c = target.setdefault(r["op"], [0, 0])
        c[0] += 1
        c[1] += r["bytes"]
        total += r["bytes"] * (r["loop"] if r["loop"] not in (None, -1) else 1)
    return {"per_inference_step": per_inf, "per_step_outside": outside,
            "bytes_per_step": total, "loops": sorted(inner)}


def compiled_step_hlo(step_fn, placement, net, opt_state, batch_shapes, carry=None,
                      key=None) -> str:
    """The compiled, SPMD-partitioned HLO text of the sharded training step, compiled from
    abstract arrays (nothing is transferred to the devices). ``batch_shapes``:
    ``{node: (shape, dtype)}`` of one global batch."""
    like_net, like_opt = net, opt_state
    if getattr(step_fn, "placement", None) is None:
        placement.shard_step(step_fn, like_net, like_opt)

    def abstract(tree, place: bool):
        def one(a):
            if not isinstance(a, (jax.Array, np.ndarray, jax.ShapeDtypeStruct)):
                return a
            shape = list(a.shape)
            s = placement.sharding(a) if place else placement.replicated
            if place and placement.is_stacked(a.shape):
                shape[0] = placement.padded_len(shape[0])
            return jax.ShapeDtypeStruct(tuple(shape), a.dtype, sharding=s)
        return jax.tree_util.tree_map(one, tree)

    batch = {k: jax.ShapeDtypeStruct(tuple(s), d, sharding=placement.batch_sharding)
             for k, (s, d) in batch_shapes.items()}
    args = (abstract(net, True), abstract(opt_state, True), batch, key, abstract(carry, False))
    dyn, static = eqx.partition(args, lambda a: isinstance(a, jax.ShapeDtypeStruct))
    inner = step_fn._fn

    def f(d):
        out = inner.__wrapped__(*eqx.combine(d, static)) if hasattr(inner, "__wrapped__") \
            else inner(*eqx.combine(d, static))
        return eqx.filter(out, eqx.is_array)

    return jax.jit(f).lower(dyn).compile().as_text()
