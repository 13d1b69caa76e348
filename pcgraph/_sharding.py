"""Training past one device with JAX's own machinery: ``jax.sharding`` and ``jax.distributed``.

A :class:`jax.sharding.Mesh` has up to two named axes:

* ``data``: every batch (``[B, ...]`` per clamped node) is split along ``B`` over this axis
  (``NamedSharding(mesh, P("data"))``). Weights and the weight optimiser's state are replicated, so
  each device relaxes its slice of the batch and the weight gradient (a mean over the batch) is
  summed across devices by the all-reduce XLA's SPMD partitioner inserts.
* ``layer``: every stacked term group (``[E, ...]`` parameters, e.g. the 126 residual layers of
  ``models/resnet128.pcg``) is split along ``E`` over this axis. Its activities ``[G, B, ...]``
  follow from the partitioner (pinning them with sharding constraints compiles to the same
  collectives). PC inference is local (a node's update needs only its neighbours'
  activities and errors), so a contiguous block of layers per device only needs the activities at
  the block boundaries: the shifted slices ``h[0:G-1]`` / ``h[1:G]`` of a residual chain become
  ``collective-permute``s of one ``[B, width]`` row between neighbouring devices per inference step
  (:func:`collectives` reads them from the compiled HLO). Groups smaller than the ``layer`` axis
  and the unstacked terms are replicated.

``jax.Array`` arguments of a ``jax.jit`` must tile evenly, so a stacked leaf whose ``E`` is not a
multiple of the ``layer`` axis is kept zero-padded to the next multiple between steps; the jitted
step slices the padding off, runs the engine's unchanged step, pads its outputs again and
constrains them back to the layer sharding (:meth:`Placement.shard_step`). The padding never
reaches the engine or a checkpoint (:meth:`Placement.host` gives the plain network back).

Everything runs in ONE ``jax.jit`` per training step (no ``pmap``, no hand-written
communication): shardings enter as the inputs' placement and ``with_sharding_constraint`` on the
outputs. Results equal the single-device run up to the order of floating-point sums.

Several processes (hosts): :func:`initialize` calls ``jax.distributed.initialize`` (CPU: the gloo
collectives), after which ``jax.devices()`` lists every process's devices and one mesh spans them.
Every process iterates the same global batches (the batch order depends only on seed and epoch)
and hands only its own rows to its devices (``jax.make_array_from_process_local_data``); results
are gathered with ``multihost_utils.process_allgather``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._errors import Error

DATA, LAYER = "data", "layer"
AXES = (DATA, LAYER)


class MeshError(Error, ValueError):
    """A mesh that cannot be built from the devices there are, or a batch it cannot split."""


# ------------------------------------------------------------------------------ meshes
def parse_mesh(text: str | int | Mapping[str, int]) -> dict[str, int]:
    """``"data=2,layer=4"`` (or ``"4"``, an int, a mapping) as ``{"data": 2, "layer": 4}``."""
    if isinstance(text, Mapping):
        spec = {str(k): int(v) for k, v in text.items()}
    elif isinstance(text, int) or (isinstance(text, str) and text.strip().isdigit()):
        spec = {DATA: int(text)}
    else:
        spec = {}
        for part in str(text).split(","):
            name, eq, size = part.strip().partition("=")
            if not eq or not size.strip().isdigit():
                raise MeshError(f"cannot read mesh {text!r}: write it as data=N or "
                                "data=N,layer=M (e.g. data=2,layer=4)")
            if name.strip() in spec:
                raise MeshError(f"mesh {text!r} names axis {name.strip()!r} twice")
            spec[name.strip()] = int(size)
    unknown = [k for k in spec if k not in AXES]
    if unknown:
        raise MeshError(f"unknown mesh axis {', '.join(map(repr, unknown))}; the axes are "
                        f"{' and '.join(AXES)}")
    bad = [k for k, v in spec.items() if v < 1]
    if bad:
        raise MeshError(f"mesh axis {bad[0]!r} must have at least one device")
    return spec


def make_mesh(spec: Mesh | str | int | Mapping[str, int] | None = None, *,
              devices=None) -> Mesh:
    """A ``Mesh`` with axes ``("data", "layer")`` from ``spec`` (see :func:`parse_mesh`; None:
    every device on ``data``), on the first ``data·layer`` of ``devices`` (default: all of them,
    across processes). A ``Mesh`` is returned as it is."""
    if isinstance(spec, Mesh):
        return spec
    devices = list(jax.devices() if devices is None else devices)
    sizes = parse_mesh(len(devices) if spec is None else spec)
    shape = (sizes.get(DATA, 1), sizes.get(LAYER, 1))
    n = shape[0] * shape[1]
    if n > len(devices):
        raise MeshError(
            f"the mesh data={shape[0]},layer={shape[1]} needs {n} devices but there are "
            f"{len(devices)} ({jax.default_backend()}); on the CPU set XLA_FLAGS="
            f"--xla_force_host_platform_device_count={n} before JAX starts")
    if jax.process_count() > 1 and n != len(devices):
        raise MeshError(f"with {jax.process_count()} processes the mesh must use every device "
                        f"({len(devices)}), not {n}")
    return jax.make_mesh(shape, AXES, devices=devices[:n],
                         axis_types=(jax.sharding.AxisType.Auto,) * 2)


def axis_size(mesh: Mesh, name: str) -> int:
    return int(mesh.shape.get(name, 1))


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> None:
    """``jax.distributed.initialize`` (arguments None: JAX reads its environment variables or the
    cluster's). On the CPU the cross-process collectives are gloo's. Call before any other JAX
    work; a second call is a no-op."""
    if jax.distributed.is_initialized():
        return
    try:  # affects only the CPU backend's collectives
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # an option of this jax version only
        pass
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)


# ------------------------------------------------------------------------------ placement
def _leaves(tree):
    return jax.tree_util.tree_flatten(tree)


@dataclass(frozen=True)
class Placement:
    """Where a network's arrays live on a mesh (see the module doc).

    ``stacked``: the (unpadded) shapes of the parameter leaves split over ``layer``; a leaf of the
    network or of the optimiser state with one of these shapes is layer-sharded (padded to a
    multiple of the axis), every other array is replicated."""

    mesh: Mesh
    stacked: frozenset

    @classmethod
    def make(cls, mesh, net, batch_size: int | None = None) -> "Placement":
        mesh = make_mesh(mesh)
        n_layer = axis_size(mesh, LAYER)
        stacked = frozenset()
        if n_layer > 1:
            stacked = frozenset(tuple(a.shape) for a in jax.tree_util.tree_leaves(net.params)
                                if a.ndim >= 1 and a.shape[0] >= n_layer)
        place = cls(mesh, stacked)
        if batch_size is not None:
            place.check_batch(batch_size)
        return place

    @property
    def n_data(self) -> int:
        return axis_size(self.mesh, DATA)

    @property
    def n_layer(self) -> int:
        return axis_size(self.mesh, LAYER)

    def check_batch(self, batch_size: int, what: str = "batch size") -> None:
        if batch_size % self.n_data:
            raise MeshError(f"the {what} {batch_size} does not split over the {self.n_data} "
                            f"devices of the mesh's data axis; use a multiple of {self.n_data}")

    # ---- shardings
    def _is_stacked(self, shape) -> bool:
        return tuple(shape) in self.stacked

    def _padded_len(self, n: int) -> int:
        return -(-n // self.n_layer) * self.n_layer

    def sharding(self, a) -> NamedSharding:
        """The sharding of one (unpadded-shape) network or optimiser-state array."""
        if self._is_stacked(a.shape):
            return NamedSharding(self.mesh, P(LAYER))
        return NamedSharding(self.mesh, P())

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, P())

    @property
    def batch_sharding(self) -> NamedSharding:
        return NamedSharding(self.mesh, P(DATA))

    # ---- padding of layer-sharded leaves
    def _pad(self, a):
        if not self._is_stacked(a.shape):
            return a
        n = self._padded_len(a.shape[0])
        if n == a.shape[0]:
            return a
        return jnp.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    def _unpad_tree(self, tree, like):
        leaves, tdef = _leaves(tree)
        return tdef.unflatten([a[:n] if n is not None else a for a, n in zip(leaves, like)])

    def _lengths(self, tree) -> tuple:
        """Per leaf, the unpadded length of a layer-sharded leaf (None for the others)."""
        return tuple(a.shape[0] if hasattr(a, "shape") and self._is_stacked(a.shape) else None
                     for a in jax.tree_util.tree_leaves(tree))

    def _constrain(self, tree, like):
        leaves, tdef = _leaves(tree)
        out = []
        for a, n in zip(leaves, like):
            if not isinstance(a, jax.Array):
                out.append(a)
            elif n is not None:
                out.append(jax.lax.with_sharding_constraint(
                    self._pad(a), NamedSharding(self.mesh, P(LAYER))))
            else:
                out.append(jax.lax.with_sharding_constraint(a, self.replicated))
        return tdef.unflatten(out)

    def _put_leaf(self, a, sharding):
        if not isinstance(a, (jax.Array, np.ndarray)):
            return a
        if jax.process_count() > 1:  # every process holds the whole (replicated / padded) value
            return _global_array(np.asarray(gather(a)), sharding)
        return jax.device_put(a, sharding)

    def put(self, tree):
        """``tree`` (network, optimiser state) placed on the mesh: layer-sharded leaves padded and
        split over ``layer``, the rest replicated."""
        def one(a):
            if not isinstance(a, (jax.Array, np.ndarray)):
                return a
            s = self.sharding(a)
            return self._put_leaf(self._pad(jnp.asarray(a)) if self._is_stacked(a.shape)
                                  else a, s)
        return jax.tree_util.tree_map(one, tree)

    def put_replicated(self, tree):
        return jax.tree_util.tree_map(lambda a: self._put_leaf(a, self.replicated), tree)

    def host(self, tree, like=None):
        """The plain single-device value of a placed ``tree`` (on this process's first device);
        ``like``: the tree it was placed from (for the unpadded lengths of layer-sharded leaves).
        A replicated array gives its local copy (no transfer); a sharded one is gathered."""
        leaves, tdef = _leaves(tree)
        lengths = self._lengths(like) if like is not None else (None,) * len(leaves)
        out = []
        for a, n in zip(leaves, lengths):
            if not isinstance(a, jax.Array) or len(a.sharding.device_set) == 1:
                out.append(a)
            elif n is None and a.is_fully_replicated:
                out.append(a.addressable_data(0))
            else:
                a = gather(a)
                out.append(jnp.asarray(a[:n] if n is not None else a))
        return tdef.unflatten(out)

    # ---- batches
    def batch(self, batch: Mapping[str, Any]) -> dict:
        """A global batch ``{node: [B, ...]}`` split over ``data`` (every process passes the same
        global batch and transfers only its own rows)."""
        out = {}
        for k, v in batch.items():
            v = np.asarray(v)
            self.check_batch(v.shape[0])
            out[k] = _global_array(v, self.batch_sharding)
        return out

    # ---- the step
    def shard_step(self, step_fn, like_net, like_opt):
        """Make ``step_fn`` (a ``TrainStep`` built with ``jit=False``) ONE jitted step over the
        mesh, taking and returning the placed (padded) network and optimiser state. Returns it."""
        raw = step_fn._fn  # the traced-count wrapper of the engine's step, not jitted
        net_len, opt_len = self._lengths(like_net), self._lengths(like_opt)

        def step(net, opt_state, batch, key, carry):
            net = self._unpad_tree(net, net_len)
            opt_state = self._unpad_tree(opt_state, opt_len)
            net, opt_state, metrics, carry = raw(net, opt_state, batch, key, carry)
            return (self._constrain(net, net_len), self._constrain(opt_state, opt_len), metrics,
                    carry)

        step_fn._fn = eqx.filter_jit(step)
        step_fn.placement = self
        return step_fn


def _global_array(v: np.ndarray, sharding: NamedSharding):
    """A global array from the whole value ``v`` (every process holds it, e.g. the same global
    batch): each process transfers only the rows its own devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(v, sharding)
    return jax.make_array_from_callback(v.shape, sharding, lambda idx: v[idx])


def gather(a):
    """The whole value of a (possibly sharded, possibly multi-process) array, as numpy."""
    if not isinstance(a, jax.Array):
        return a
    if a.is_fully_addressable:
        return np.asarray(jax.device_get(a))
    if a.is_fully_replicated:
        return np.asarray(a.addressable_data(0))
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


def shard_eval(fn: Callable, mesh) -> Callable:
    """An evaluation function ``fn(net, batch, key, carry)`` run data-parallel over every device
    of ``mesh`` (its batch split over all of them when it divides, the network and the carry
    replicated); its outputs are gathered to numpy."""
    mesh = make_mesh(mesh)
    flat = jax.make_mesh((mesh.devices.size,), (DATA,), devices=list(mesh.devices.flat),
                         axis_types=(jax.sharding.AxisType.Auto,))
    rep = NamedSharding(flat, P())
    split = NamedSharding(flat, P(DATA))
    n_dev = mesh.devices.size

    def put_one(a):
        if not isinstance(a, (jax.Array, np.ndarray)):
            return a
        if isinstance(a, jax.Array) and a.sharding == rep:
            return a
        if jax.process_count() == 1:
            return jax.device_put(a, rep)
        return _global_array(np.asarray(gather(a)), rep)

    placed: list = [None, None]  # (the last network given, its placed copy): one transfer a call

    def put_net(net):
        if placed[0] is not net:
            placed[0], placed[1] = net, jax.tree_util.tree_map(put_one, net)
        return placed[1]

    def run(net, batch, key=None, carry=None):
        net, carry = put_net(net), jax.tree_util.tree_map(put_one, carry)
        b = {k: (_global_array(np.asarray(v), split) if np.shape(v)[0] % n_dev == 0
                 else _global_array(np.asarray(v), rep)) for k, v in batch.items()}
        out = fn(net, b, key, carry)
        return jax.tree_util.tree_map(gather, out)

    return run


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
    "bytes_per_step": total}``: collectives inside the innermost loop (run every inference step)
    and outside it (once per training step), and the bytes one training step moves per device
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


def compiled_step_hlo(step_fn, placement: Placement, net, opt_state, batch_shapes, carry=None,
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
            if place and placement._is_stacked(a.shape):
                shape[0] = placement._padded_len(shape[0])
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


# ------------------------------------------------------------------------------ the fit hook
class FitPlacement:
    """What ``fit`` does differently on a mesh: the step made a sharded one, the network,
    optimiser state and initialiser state placed, every batch split; ``net``/``opt``/``carry``/
    ``batch`` give the plain values back (evaluation, callbacks, checkpoints)."""

    def __init__(self, mesh, step_fn, net, opt_state, batch_size: int):
        self.placement = Placement.make(mesh, net, batch_size)
        self.like_net, self.like_opt = net, opt_state
        self.placement.shard_step(step_fn, net, opt_state)

    def place(self, net, opt_state, carry):
        p = self.placement
        return p.put(net), p.put(opt_state), p.put_replicated(carry)

    def split(self, batch):
        return self.placement.batch(batch)

    def net(self, net):
        return self.placement.host(net, self.like_net)

    def opt(self, opt_state):
        return self.placement.host(opt_state, self.like_opt)

    def carry(self, carry):
        return self.placement.host(carry)

    def batch(self, batch):
        return {k: gather(v) for k, v in batch.items()}
