"""Device meshes and processes: the ``("data", "layer")`` :class:`jax.sharding.Mesh` pcgraph trains
on (:func:`make_mesh`), ``jax.distributed`` for several processes (:func:`initialize`), and moving
whole values in and out of arrays that span processes (:func:`global_array`, :func:`gather`).
How arrays are placed on a mesh is :mod:`pcgraph._sharding`; docs/scaling.md is the user's guide."""

from __future__ import annotations

import os
import sys
from typing import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

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



# ------------------------------------------------------------------------------ processes
def native_stdout_to_stderr() -> None:
    """Send what native code writes to the process's stdout (gloo's "[Gloo] Rank 0 is connected
    to 7 peer ranks" lines come from C++ ``std::cout`` when the first collective runs) to
    stderr, and keep Python's ``sys.stdout`` on the real stdout. A command-line process calls this
    after :func:`initialize`, so that ``--json`` prints one clean JSON document; a second call is
    a no-op."""
    if getattr(native_stdout_to_stderr, "done", False):
        return
    sys.stdout.flush()
    real = os.dup(1)
    os.dup2(2, 1)  # file descriptor 1 (native writes) is stderr from now on
    sys.stdout = os.fdopen(real, "w", buffering=1, encoding=sys.stdout.encoding or "utf-8")
    native_stdout_to_stderr.done = True


def global_array(v: np.ndarray, sharding: NamedSharding):
    """A global array from the whole value ``v`` (every process holds it, e.g. the same global
    batch): each process transfers only the rows its own devices hold."""
    if jax.process_count() == 1:
        return jax.device_put(np.asarray(v), sharding)
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
