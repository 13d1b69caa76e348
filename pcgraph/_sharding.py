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
  (:func:`pcgraph._collectives.collectives` reads them from the compiled HLO). Groups smaller
  than the ``layer`` axis and the unstacked terms are replicated.

``jax.Array`` arguments of a ``jax.jit`` must tile evenly, so a stacked leaf whose ``E`` is not a
multiple of the ``layer`` axis is kept zero-padded to the next multiple between steps; the jitted
step slices the padding off, runs the engine's unchanged step, pads its outputs again and
constrains them back to the layer sharding (:meth:`Placement.shard_step`). The padding never
reaches the engine or a checkpoint (:meth:`Placement.host` gives the plain network back).

Everything runs in ONE ``jax.jit`` per training step (no ``pmap``, no hand-written
communication): shardings enter as the inputs' placement and ``with_sharding_constraint`` on the
outputs. Results equal the single-device run up to the order of floating-point sums.

Several processes (hosts): :func:`pcgraph._mesh.initialize` calls ``jax.distributed.initialize``
(CPU: the gloo collectives), after which ``jax.devices()`` lists every process's devices and one
mesh spans them. Every process iterates the same global batches (the batch order depends only on seed and epoch)
and hands only its own rows to its devices (``jax.make_array_from_callback``); results
are gathered with ``multihost_utils.process_allgather``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ._mesh import DATA, LAYER, MeshError, axis_size, gather, global_array, make_mesh


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
    def is_stacked(self, shape) -> bool:
        return tuple(shape) in self.stacked

    def padded_len(self, n: int) -> int:
        return -(-n // self.n_layer) * self.n_layer

    def sharding(self, a) -> NamedSharding:
        """The sharding of one (unpadded-shape) network or optimiser-state array."""
        if self.is_stacked(a.shape):
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
        if not self.is_stacked(a.shape):
            return a
        n = self.padded_len(a.shape[0])
        if n == a.shape[0]:
            return a
        return jnp.pad(a, [(0, n - a.shape[0])] + [(0, 0)] * (a.ndim - 1))

    def _unpad_tree(self, tree, like):
        leaves, tdef = _leaves(tree)
        return tdef.unflatten([a[:n] if n is not None else a for a, n in zip(leaves, like)])

    def _lengths(self, tree) -> tuple:
        """Per leaf, the unpadded length of a layer-sharded leaf (None for the others)."""
        return tuple(a.shape[0] if hasattr(a, "shape") and self.is_stacked(a.shape) else None
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
            return global_array(np.asarray(gather(a)), sharding)
        return jax.device_put(a, sharding)

    def put(self, tree):
        """``tree`` (network, optimiser state) placed on the mesh: layer-sharded leaves padded and
        split over ``layer``, the rest replicated."""
        def one(a):
            if not isinstance(a, (jax.Array, np.ndarray)):
                return a
            s = self.sharding(a)
            return self._put_leaf(self._pad(jnp.asarray(a)) if self.is_stacked(a.shape)
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
        global batch and transfers only its own rows; from a ``pcgraph._rows.Rows`` it reads
        only those)."""
        out = {}
        for k, v in batch.items():
            v = v if hasattr(v, "shape") else np.asarray(v)  # a pcgraph._rows.Rows stays unread
            self.check_batch(v.shape[0])
            out[k] = global_array(v, self.batch_sharding)
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
        return global_array(np.asarray(gather(a)), rep)

    placed: list = [None, None]  # (the last network given, its placed copy): one transfer a call

    def put_net(net):
        if placed[0] is not net:
            placed[0], placed[1] = net, jax.tree_util.tree_map(put_one, net)
        return placed[1]

    def run(net, batch, key=None, carry=None):
        net, carry = put_net(net), jax.tree_util.tree_map(put_one, carry)
        b = {k: (global_array(np.asarray(v), split) if np.shape(v)[0] % n_dev == 0
                 else global_array(np.asarray(v), rep)) for k, v in batch.items()}
        out = fn(net, b, key, carry)
        return jax.tree_util.tree_map(gather, out)

    return run


# ------------------------------------------------------------------------------ the fit hook
SEQUENTIAL_INITS = ("forward", "mem_forward", "sweep")  # computed layer after layer


class SequentialInitWarning(UserWarning):
    """A layer-after-layer initialisation under a ``layer`` mesh: correct, but it moves weights."""


def warn_sequential_init(placement: Placement, initialiser) -> None:
    """Warn when stacked layers are split over ``layer`` and the training initialisation runs
    them one after another: pcgraph has no pipelined forward, so XLA's partitioner moves every
    layer's weights to the devices that need them, once per training step (docs/scaling.md)."""
    if placement.n_layer == 1 or not placement.stacked or initialiser is None:
        return
    used = [m for m in SEQUENTIAL_INITS if initialiser.uses(m)]
    if used:
        import warnings

        warnings.warn(
            f"init = {used[0]} computes the layers one after another, and under the layer mesh "
            f"axis ({placement.n_layer} devices) that moves every stacked layer's weights between "
            "devices once per training step (there is no pipelined forward; the results are "
            "still exact). To exchange only boundary activities, train with init = zero or "
            "random, or split over data only (docs/scaling.md, 'Forward initialisation under a "
            "layer mesh').", SequentialInitWarning, stacklevel=5)


class FitPlacement:
    """What ``fit`` does differently on a mesh: the step made a sharded one, the network,
    optimiser state and initialiser state placed, every batch split; ``net``/``opt``/``carry``/
    ``batch`` give the plain values back (evaluation, callbacks, checkpoints)."""

    def __init__(self, mesh, step_fn, net, opt_state, batch_size: int):
        self.placement = Placement.make(mesh, net, batch_size)
        self.like_net, self.like_opt = net, opt_state
        self.placement.shard_step(step_fn, net, opt_state)
        warn_sequential_init(self.placement, step_fn.initialiser)

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
