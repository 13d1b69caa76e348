"""Atomic checkpoints: network parameters, optimiser state and training state in one file.

A checkpoint is a single file (``checkpoint.eqx`` by convention)::

    PCGCKPT2\\n
    {"...": "JSON metadata on one line", "payload_bytes": N}\\n
    sha256:<64 hex digits>\\n
    <equinox.tree_serialise_leaves payload of (net, opt_state, state): N bytes>

One file, so the metadata can never disagree with the arrays. The SHA-256 covers the metadata
line and the payload: a truncated file, appended bytes or a flipped bit anywhere is refused on
load. Only JSON and equinox's array format (``numpy.load`` without pickles) are ever read, so a
checkpoint cannot run code. A readable copy of the metadata is
also written next to it (``checkpoint.json``); it is informational, ``load`` reads the header.

Writes are atomic: the bytes go to a temporary file in the same directory, are flushed and
``fsync``-ed, and only then ``os.replace`` puts them at ``path``. An interrupted write (crash, full
disk, Ctrl-C) leaves the previous checkpoint untouched and loadable, and removes its temporary file.

PRNG keys (``jax.random.key``) are stored as their raw key data and rewrapped on load.

``state`` is the initialiser state of a run (``TrainState.carry``: memories, class means, previous
activities, amortiser and their optimiser state; ``None`` when the initialisation needs none).
Loading needs a tree of the same structure: ``pcgraph.fresh_carry`` rebuilds it from the
model, the init options, the batch size and the seed; ``like_state=None`` skips it.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import Error

MAGIC = b"PCGCKPT2\n"
OLD_MAGIC = b"PCGCKPT1\n"
FORMAT_VERSION = 2
MAX_HEADER_BYTES = 1 << 24  # the metadata line


class CheckpointError(Error):
    """A checkpoint could not be read, or does not match the network/optimiser it is loaded into."""


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _keys_to_data(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _to_jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating,)):
        return float(x)
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, (np.ndarray, jax.Array)):
        return np.asarray(x).tolist()
    if isinstance(x, Path):
        return str(x)
    return x


def atomic_write(path: str | os.PathLike, write, mode: str = "wb") -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path``, fsync it, then rename it onto
    ``path``. On any exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(d: Path) -> None:
    try:
        dfd = os.open(d, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def save(path: str | os.PathLike, net: Any, opt_state: Any, state: Any, meta: dict) -> Path:
    """Write ``(net, opt_state, state)`` and the JSON-able ``meta`` dict to ``path`` atomically.

    ``meta`` should hold what is needed to resume exactly (epoch, step, seed, RNG state, model hash,
    settings); numpy/JAX scalars and arrays in it are converted to JSON numbers/lists."""
    path = Path(path)
    meta = dict(_to_jsonable(meta))
    meta["format_version"] = FORMAT_VERSION
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, _keys_to_data((net, opt_state, state)))
    payload = buf.getvalue()
    meta["payload_bytes"] = len(payload)
    header = json.dumps(meta, sort_keys=True, allow_nan=True).encode()
    digest = hashlib.sha256(header + b"\n" + payload).hexdigest()

    def write(f):
        f.write(MAGIC)
        f.write(header + b"\n")
        f.write(b"sha256:" + digest.encode() + b"\n")
        f.write(payload)

    atomic_write(path, write)
    sidecar = path.with_suffix(".json")
    atomic_write(sidecar, lambda f: f.write(json.dumps(meta, indent=2, sort_keys=True) + "\n"), "w")
    return path


def read_meta(path: str | os.PathLike) -> dict:
    """The metadata header of a checkpoint, without reading its arrays."""
    with open(path, "rb") as f:
        return _read_header(f, path)


def _read_header(f, path) -> dict:
    return _read_head(f, path)[0]


def _read_head(f, path) -> tuple[dict, bytes, str]:
    """(metadata, the metadata line, the recorded SHA-256) of an open checkpoint."""
    magic = f.read(len(MAGIC))
    if magic == OLD_MAGIC:
        raise CheckpointError(f"{path}: a checkpoint of format 1 (no content hash), written by an "
                              "older pcgraph; train again to write a verifiable one")
    if magic != MAGIC:
        raise CheckpointError(f"{path}: not a pcgraph checkpoint (bad magic header)")
    line = f.readline(MAX_HEADER_BYTES)
    digest = f.readline(80)
    if not line.endswith(b"\n") or not digest.startswith(b"sha256:") or len(digest) != 72:
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint header")
    try:
        meta = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: corrupt checkpoint metadata: {e}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("payload_bytes"), int):
        raise CheckpointError(f"{path}: corrupt checkpoint metadata (no payload size)")
    return meta, line, digest[7:-1].decode("ascii", "replace")


def load(
    path: str | os.PathLike, like_net: Any, like_opt_state: Any = None, like_state: Any = None
) -> tuple[Any, Any, Any, dict]:
    """Read a checkpoint written by :func:`save` into trees shaped like the ``like_*`` arguments.

    Returns ``(net, opt_state, state, meta)``. Raises :class:`CheckpointError` if the file is not a
    checkpoint or its arrays do not match the given structure (different model or optimiser)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    like = (like_net, like_opt_state, like_state)
    like_data = _keys_to_data(like)
    if not path.is_file():
        raise CheckpointError(f"{path}: not a regular file")
    with open(path, "rb") as f:
        meta, line, digest = _read_head(f, path)
        size = meta["payload_bytes"]
        if size < 0 or size > path.stat().st_size:
            raise CheckpointError(f"{path}: truncated checkpoint (the header announces {size:,} "
                                  "bytes of arrays; the file is shorter)")
        payload = f.read(size + 1)
    if len(payload) != size:
        what = "truncated" if len(payload) < size else "has bytes appended"
        raise CheckpointError(f"{path}: corrupt checkpoint ({what}: {len(payload):,}"
                              f"{'+' if len(payload) > size else ''} bytes of arrays, the header "
                              f"says {size:,})")
    if not hmac.compare_digest(hashlib.sha256(line + payload).hexdigest(), digest):
        raise CheckpointError(f"{path}: corrupt checkpoint (content hash mismatch: the file was "
                              "changed after it was written)")
    with io.BytesIO(payload) as f:
        try:
            loaded = eqx.tree_deserialise_leaves(f, like_data)
        except Exception as e:  # wrong structure
            raise CheckpointError(
                f"{path}: could not read the checkpoint arrays ({type(e).__name__}: {e}); "
                "was it written for a different model or optimiser?"
            ) from None
    _check_like(path, loaded, like_data)

    def rewrap(new, old):
        if _is_key(old):
            return jax.random.wrap_key_data(new, impl=jax.random.key_impl(old))
        return new

    loaded = jax.tree_util.tree_map(rewrap, loaded, like)
    net, opt_state, state = loaded
    return net, opt_state, state, meta


def _check_like(path, loaded, like) -> None:
    got = jax.tree_util.tree_leaves_with_path(loaded)
    want = jax.tree_util.tree_leaves_with_path(like)
    for (kp, a), (_, b) in zip(got, want):
        if isinstance(b, (jax.Array, np.ndarray)):
            if tuple(np.shape(a)) != tuple(np.shape(b)):
                raise CheckpointError(
                    f"{path}: array {jax.tree_util.keystr(kp)} has shape {list(np.shape(a))} in the "
                    f"checkpoint but {list(np.shape(b))} in the model; was it written for a "
                    "different model?"
                )
            if jnp.dtype(a.dtype) != jnp.dtype(b.dtype):
                raise CheckpointError(
                    f"{path}: array {jax.tree_util.keystr(kp)} has dtype {a.dtype} in the "
                    f"checkpoint but {b.dtype} in the model"
                )
