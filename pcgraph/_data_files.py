"""Data files: the data errors, and reading CIFAR-10 batches (a restricted unpickler, so no data
file can run code), writing IDX files, and finding a data set's files in a folder. ``read_idx``
and its size limit ``MAX_DATA_BYTES`` live in ``pcgraph.data``."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np

from ._errors import Error


class DataError(Error):
    """Base class of every data problem (missing files, bad formats, checksums, shapes)."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """The files of a data set are nowhere on the search path; the message says how to get them."""


class DataFormatError(DataError, ValueError):
    """A file is not in the expected format (bad IDX magic, truncated data, ...)."""


class ChecksumError(DataError):
    """A downloaded file does not match its published checksum (the file is not kept)."""


class DataShapeError(DataError, ValueError):
    """A model node's shape does not fit the data set's samples."""


IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
              "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def open_stream(path: Path):
    """``path`` opened for reading bytes, gunzipped if it is gzip (only regular files)."""
    if not path.is_file():
        raise OSError("not a regular file")
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def read_exactly(f, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        b = f.read(min(left, 1 << 24))
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as IDX (gzipped when ``path`` ends in ``.gz``); used by tests and tools."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}
    a = np.asarray(array)
    code = codes[a.dtype.newbyteorder("=")]
    data = (bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
            + a.astype(np.dtype(IDX_DTYPES[code])).tobytes())
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


def find_idx(d: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in IDX_FILES.items():
        alt = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte (a common variant)
        cands = [d / f"{s}{ext}" for s in (stem, alt) for ext in (".gz", "")]
        hit = next((p for p in cands if p.is_file()), None)
        if hit is None:
            return None
        found[key] = hit
    return found


def find_cifar(d: Path) -> Path | None:
    for root in (d / "cifar-10-batches-py", d):
        if all((root / f).is_file() for f in CIFAR_TRAIN + ("test_batch",)):
            return root
    return None


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR-10 batch holds: dicts, lists, bytes, str, ints and numpy
    arrays. Any other global (``os.system``, ``builtins.eval``, ...) is refused, so a crafted
    data file cannot run code."""

    ALLOWED = {(m, f) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
               for f in ("_reconstruct", "scalar")} | {
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (a CIFAR-10 batch "
                                         "holds only arrays, lists, bytes and numbers)")
        return super().find_class(module, name)


#: Largest CIFAR-10 batch file read (a real one is about 31 MB).
MAX_CIFAR_BATCH_BYTES = 2**28


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        if not path.is_file():
            raise OSError("not a regular file")
        if path.stat().st_size > MAX_CIFAR_BATCH_BYTES:
            raise DataFormatError(f"{path}: {path.stat().st_size:,} bytes, over the "
                                  f"{MAX_CIFAR_BATCH_BYTES:,}-byte limit of a CIFAR-10 batch")
        with open(path, "rb") as f:
            d = _BatchUnpickler(f, encoding="bytes").load()
        if not isinstance(d, dict):
            raise DataFormatError(f"{path}: not a CIFAR-10 python batch (a pickled "
                                  f"{type(d).__name__}, not a dict)")
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        data, labels = d["data"], d["labels"]
        if not isinstance(data, np.ndarray) or not isinstance(labels, (list, np.ndarray)):
            raise DataFormatError(f"{path}: not a CIFAR-10 python batch ('data' must be an "
                                  "array and 'labels' a list)")
        x = np.asarray(data, np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(labels, np.int64)
    except DataFormatError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling/shape failure is a format error
        reason = f"{type(e).__name__}: {e}" if not isinstance(e, KeyError) else f"no key {e}"
        raise DataFormatError(f"{path}: not a CIFAR-10 python batch ({reason})") from None
    if len(x) != len(y):
        raise DataFormatError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y
