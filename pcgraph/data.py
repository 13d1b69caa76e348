"""Data sets, splits and batches for pcgraph (numpy only; nothing here imports JAX).

``load(name)`` returns a :class:`Dataset` of float32 inputs and int32 labels for ``digits``
(scikit-learn's embedded 8x8 digits), ``fashion-mnist``, ``mnist``, ``kmnist`` (IDX files) and
``cifar10`` (the python pickle batches). Files are looked up, in order, in ``data_dir`` (and
``data_dir/<name>``), ``$PCGRAPH_DATA/<name>``, ``$PCGRAPH_DATA``, the system folder
(``/usr/share/datasets/fashion-mnist`` for Fashion-MNIST) and the download cache
(``$XDG_CACHE_HOME/pcgraph/<name>``, default ``~/.cache/pcgraph/<name>``).

Normalisation (``normalize=``): ``"standardize"`` (default) scales pixels to [0, 1] and then
subtracts the per-channel mean and divides by the per-channel standard deviation of the training
set actually used (after the validation split and ``fraction``); ``"unit"`` stops at [0, 1]. The
statistics are kept in ``Dataset.mean`` / ``Dataset.std`` (``unnormalize`` undoes them).

Batches: :func:`batches` (seeded per-epoch permutation, static shapes), :func:`eval_batches`
(every example once, last batch padded, with a mask) and :func:`class_balanced_batches`
(stream-aligned training: ``k = batch_size // n_classes`` samples of each class, sorted by
class, so sample ``j`` of class ``c`` sits at position ``c * k + j``).
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import math
import os
import pickle
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ._errors import Error

DATASETS = ("digits", "fashion-mnist", "mnist", "kmnist", "cifar10")
_ALIASES = {"fashion": "fashion-mnist", "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "k-mnist": "kmnist"}
#: Folders searched after data_dir and $PCGRAPH_DATA (tests monkeypatch this).
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}
#: Official mirrors and checksums (MD5: 32 hex digits, SHA-256: 64). ``base_url`` or
#: ``$PCGRAPH_DATA_URL`` replaces the mirrors: files are fetched from ``{base}/{filename}``.
RESOURCES: dict[str, dict] = {
    "mnist": {"mirrors": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                          "http://yann.lecun.com/exdb/mnist/"),
              "files": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}},
    "fashion-mnist": {"mirrors": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
                      "files": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}},
    "kmnist": {"mirrors": ("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
               "files": {"train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
                         "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
                         "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
                         "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134"}},
    "cifar10": {"mirrors": ("https://www.cs.toronto.edu/~kriz/",),
                "files": {"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"}},
}
_IDX_FILES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
              "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CLASSES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
}


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


@dataclass(frozen=True, eq=False)
class Dataset:
    """A split data set: float32 inputs of per-sample shape ``input_shape``, int32 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    input_shape: tuple[int, ...]
    x_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    normalize: str = "unit"
    mean: tuple[float, ...] = (0.0,)  # per channel, subtracted after scaling to [0, 1]
    std: tuple[float, ...] = (1.0,)
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x is None:
                continue
            if tuple(x.shape[1:]) != tuple(self.input_shape) or len(x) != len(y):
                raise DataShapeError(f"{self.name}: x_{split} {x.shape} / y_{split} {y.shape} do "
                                     f"not match input_shape {self.input_shape}")

    def one_hot(self, y: np.ndarray) -> np.ndarray:
        """Labels ``(n,)`` as float32 one-hot rows ``(n, n_classes)``."""
        return np.eye(self.n_classes, dtype=np.float32)[np.asarray(y)]

    def reshaped(self, shape: Sequence[int]) -> Dataset:
        """The same data with every sample reshaped (C order) to ``shape``."""
        shape = tuple(int(d) for d in shape)
        r = lambda a: None if a is None else a.reshape((len(a),) + shape)  # noqa: E731
        return dataclasses.replace(self, x_train=r(self.x_train), x_val=r(self.x_val),
                                   x_test=r(self.x_test), input_shape=shape)

    def unnormalize(self, x: np.ndarray) -> np.ndarray:
        """Undo the standardisation: back to [0, 1] pixels (shape kept)."""
        x = np.asarray(x, dtype=np.float32)
        c = len(self.mean)
        flat = x.reshape(-1, c, int(np.prod(self.input_shape)) // c)
        m = np.asarray(self.mean, np.float32)[:, None]
        s = np.asarray(self.std, np.float32)[:, None]
        return (flat * s + m).reshape(x.shape)

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    def __repr__(self) -> str:
        val = f", val={len(self.x_val)}" if self.x_val is not None else ""
        return (f"Dataset({self.name!r}, train={len(self.x_train)}{val}, test={len(self.x_test)}, "
                f"input_shape={self.input_shape}, n_classes={self.n_classes}, "
                f"normalize={self.normalize!r})")


# ----------------------------------------------------------------------------------- file formats
#: Largest data file read (bytes, after decompression); a bigger one is refused before reading.
MAX_DATA_BYTES = 2**33


def _open_stream(path: Path):
    """``path`` opened for reading bytes, gunzipped if it is gzip (only regular files)."""
    if not path.is_file():
        raise OSError("not a regular file")
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def _read_exactly(f, n: int) -> bytes:
    chunks, left = [], n
    while left > 0:
        b = f.read(min(left, 1 << 24))
        if not b:
            break
        chunks.append(b)
        left -= len(b)
    return b"".join(chunks)


def read_idx(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """Read an IDX file (raw or gzipped): magic ``0 0 dtype ndim``, big-endian int32 dims, data.

    The header is read first and the size it announces checked (against ``MAX_DATA_BYTES`` and
    the file) before the data is read, so a gzip bomb or a forged header allocates nothing.
    ``mmap``: a raw (not gzipped) file is memory-mapped (``np.memmap``), read only where indexed."""
    path = Path(path)
    try:
        with _open_stream(path) as f:
            mapped = mmap and not isinstance(f, gzip.GzipFile)
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _IDX_DTYPES:
                raise DataFormatError(
                    f"{path}: not an IDX file (bad magic number {head[:4].hex() or 'empty'};"
                    f" expected 00 00 <dtype 08/09/0b/0c/0d/0e> <ndim>)")
            dtype, ndim = np.dtype(_IDX_DTYPES[head[2]]), head[3]
            raw_dims = f.read(4 * ndim)
            if len(raw_dims) < 4 * ndim:
                raise DataFormatError(f"{path}: truncated IDX header ({ndim} dimensions, "
                                      f"{4 + len(raw_dims)} bytes)")
            dims = tuple(int(d) for d in np.frombuffer(raw_dims, ">u4", count=ndim))
            size = math.prod(dims) * dtype.itemsize
            header = 4 + 4 * ndim
            if size > MAX_DATA_BYTES:
                raise DataFormatError(f"{path}: IDX header announces dims {dims} ({size:,} bytes),"
                                      f" over the {MAX_DATA_BYTES:,}-byte limit (data.MAX_DATA_BYTES)")
            if mapped and path.stat().st_size == header + size:
                return np.memmap(path, dtype, "r", offset=header, shape=dims)
            buf = _read_exactly(f, size + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from e
    if len(buf) != size:
        what = "truncated" if len(buf) < size else "has trailing bytes"
        raise DataFormatError(f"{path}: IDX size mismatch ({what}): dims {dims} of {dtype.name} "
                              f"need {header + size} bytes, file has "
                              f"{header + len(buf) if len(buf) <= size else 'more'}")
    return np.frombuffer(buf, dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as IDX (gzipped when ``path`` ends in ``.gz``); used by tests and tools."""
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    a = np.asarray(array)
    code = codes[a.dtype.newbyteorder("=")]
    data = (bytes([0, 0, code, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
            + a.astype(np.dtype(_IDX_DTYPES[code])).tobytes())
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(data)


def _find_idx(d: Path) -> dict[str, Path] | None:
    found = {}
    for key, stem in _IDX_FILES.items():
        alt = stem.replace("-idx", ".idx")  # train-images.idx3-ubyte (a common variant)
        cands = [d / f"{s}{ext}" for s in (stem, alt) for ext in (".gz", "")]
        hit = next((p for p in cands if p.is_file()), None)
        if hit is None:
            return None
        found[key] = hit
    return found


def _find_cifar(d: Path) -> Path | None:
    for root in (d / "cifar-10-batches-py", d):
        if all((root / f).is_file() for f in _CIFAR_TRAIN + ("test_batch",)):
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


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
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


# ------------------------------------------------------------------------------------ downloading
def cache_dir() -> Path:
    """Where downloads go when neither ``data_dir`` nor ``$PCGRAPH_DATA`` is given."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pcgraph"


def _checksum(path: Path, expected: str) -> str:
    h = hashlib.md5() if len(expected) == 32 else hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, dest: str | os.PathLike, checksum: str, *, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` atomically (temp file, verify, ``os.replace``).

    ``checksum`` is MD5 (32 hex digits) or SHA-256 (64). On a mismatch raises
    :class:`ChecksumError` naming the file, the expected and the actual digest; nothing is left.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        got = _checksum(Path(tmp), checksum)
        if got != checksum.lower():
            algo = "md5" if len(checksum) == 32 else "sha256"
            raise ChecksumError(f"checksum mismatch for {dest.name} (from {url}): expected {algo} "
                                f"{checksum.lower()}, got {got}; the download was discarded")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def download(name: str, dest: str | os.PathLike | None = None, *,
             base_url: str | None = None) -> Path:
    """Fetch data set ``name`` into ``dest`` (default ``$PCGRAPH_DATA/<name>`` or the cache).

    Mirrors come from :data:`RESOURCES`; ``base_url`` (or ``$PCGRAPH_DATA_URL``) replaces them.
    Files already present are kept. Returns the folder.
    """
    name = _canonical(name)
    if name not in RESOURCES:
        raise DataError(f"{name} is embedded and needs no download")
    env = os.environ.get("PCGRAPH_DATA")
    dest = Path(dest) if dest else (Path(env) / name if env else cache_dir() / name)
    base = base_url or os.environ.get("PCGRAPH_DATA_URL")
    mirrors = (base,) if base else RESOURCES[name]["mirrors"]
    for fname, digest in RESOURCES[name]["files"].items():
        if (dest / fname).is_file():
            continue
        errors = []
        for m in mirrors:
            url = m.rstrip("/") + "/" + fname
            try:
                fetch(url, dest / fname, digest)
                break
            except (urllib.error.URLError, OSError) as e:  # ChecksumError is not caught
                errors.append(f"{url}: {e}")
        else:
            raise DataError(f"could not download {fname} for {name}:\n  " + "\n  ".join(errors))
        if fname.endswith(".tar.gz"):
            with tarfile.open(dest / fname) as tar:
                for m in tar.getmembers():
                    if m.name.startswith(("/", "..")) or ".." in Path(m.name).parts:
                        raise DataFormatError(f"{fname}: unsafe path {m.name!r} in archive")
                tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest


# ---------------------------------------------------------------------------------------- loading
def _canonical(name: str) -> str:
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return key


def _search_dirs(name: str, data_dir: str | os.PathLike | None) -> list[Path]:
    dirs: list[Path] = []
    if data_dir:
        dirs += [Path(data_dir), Path(data_dir) / name]
    env = os.environ.get("PCGRAPH_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs += [Path(p) for p in SYSTEM_DIRS.get(name, ())]
    return dirs + [cache_dir() / name]


def _not_found(name: str, dirs: list[Path]) -> DatasetNotFoundError:
    looked = "\n  ".join(str(d) for d in dirs)
    if name == "cifar10":
        layout = ("DIR/cifar-10-batches-py/{data_batch_1..data_batch_5,test_batch} "
                  "(or those files directly in DIR)")
    else:
        layout = "DIR/{" + ",".join(_IDX_FILES.values()) + "} (each raw or .gz)"
    how = f"expected layout: {layout}; pass --data-dir DIR (data_dir=DIR) or set PCGRAPH_DATA"
    if name == "fashion-mnist":
        how = ("get it with `apt-get install -y dataset-fashion-mnist` (puts files in "
               "/usr/share/datasets/fashion-mnist) or pass --data-dir DIR / set PCGRAPH_DATA; "
               + how.replace("; pass", "; with --data-dir"))
    return DatasetNotFoundError(f"data set {name} not found; looked in:\n  {looked}\n{how}; or "
                                f"download it with --download (download=True) where a network "
                                f"exists.")


def _raw(name: str, data_dir, download_: bool, base_url: str | None, mmap: bool = False):
    """(x_train uint8 N,C,H,W, y_train, x_test, y_test, max pixel value)."""
    if name == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        x = d.images.astype(np.float32)[:, None]  # (1797, 1, 8, 8), values 0..16
        xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=360, stratify=d.target,
                                              random_state=0)  # fixed test set for every seed
        return xtr, ytr, xte, yte, 16.0
    dirs = _search_dirs(name, data_dir)
    finder = _find_cifar if name == "cifar10" else _find_idx
    hit = next(((d, f) for d in dirs if (f := finder(d)) is not None), None)
    if hit is None and download_:
        dest = download(name, data_dir, base_url=base_url)
        hit = (dest, finder(dest))
    if hit is None or hit[1] is None:
        raise _not_found(name, dirs)
    found = hit[1]
    if name == "cifar10":
        parts = [_read_cifar_batch(found / f) for f in _CIFAR_TRAIN]
        xte, yte = _read_cifar_batch(found / "test_batch")
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                xte, yte, 255.0)
    arrs = {k: read_idx(p, mmap=mmap and k.endswith("images")) for k, p in found.items()}
    for split in ("train", "test"):
        xi, yi = arrs[f"{split}_images"], arrs[f"{split}_labels"]
        if xi.ndim != 3 or yi.ndim != 1 or len(xi) != len(yi):
            raise DataFormatError(f"{name} {split}: images {xi.shape} and labels {yi.shape} do not"
                                  f" pair up (expected (N, H, W) and (N,))")
    return (arrs["train_images"][:, None], arrs["train_labels"],
            arrs["test_images"][:, None], arrs["test_labels"], 255.0)


def stratified_indices(y: np.ndarray, fraction: float, rng: np.random.Generator,
                       *, at_least_one: bool = True) -> np.ndarray:
    """Sorted indices of a class-stratified subset: ``round(fraction * n_c)`` of each class ``c``.

    Each class is permuted by ``rng`` and its first samples taken, so for one seed a smaller
    fraction is a subset of a larger one.
    """
    picked = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        k = int(round(fraction * len(idx)))
        if at_least_one and fraction > 0:
            k = max(k, 1)
        picked.append(rng.permutation(idx)[:k])
    return np.sort(np.concatenate(picked)) if picked else np.zeros(0, np.int64)


def load(name: str, *, data_dir: str | os.PathLike | None = None, flatten: bool | None = True,
         normalize: str = "standardize", val_fraction: float = 0.0, fraction: float = 1.0,
         seed: int = 0, download: bool = False, base_url: str | None = None,
         mmap: bool = False) -> Dataset:
    """Load data set ``name`` (one of :data:`DATASETS`).

    Parameters
    ----------
    data_dir : folder searched first (then ``$PCGRAPH_DATA``, system folders, the cache).
    flatten : True gives vectors ``(C*H*W,)``; False or None keep images ``(C, H, W)`` (None:
        let :func:`check_shape` fit them to the model's input node).
    normalize : ``"standardize"`` ([0, 1], then training-set per-channel mean/std) or ``"unit"``.
    val_fraction : stratified share of the training set held out as ``x_val``/``y_val``.
    fraction : stratified share of the (remaining) training set kept, e.g. 0.25.
    seed : picks the validation split and the fraction subset (the test set never changes).
    download : fetch missing files (checksummed) from the mirrors or ``base_url``.
    mmap : images of raw (not gzipped) IDX files stay on disk (``pcgraph._rows.Rows``) and each
        row is read when a batch asks for it (several processes: each reads its own rows).
    """
    name = _canonical(name)
    if normalize not in ("standardize", "unit"):
        raise ValueError(f"normalize must be 'standardize' or 'unit', not {normalize!r}")
    if not 0.0 < fraction <= 1.0 or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"need 0 < fraction <= 1 and 0 <= val_fraction < 1 "
                         f"(got {fraction}, {val_fraction})")
    xtr, ytr, xte, yte, scale = _raw(name, data_dir, download, base_url, mmap)
    if isinstance(xtr, np.memmap):  # rows read on demand; the operations below stay lazy
        from ._rows import Rows

        xtr, xte = Rows(xtr), Rows(xte)
    ytr, yte = ytr.astype(np.int32), yte.astype(np.int32)
    n_classes = 10
    if max(ytr.max(initial=0), yte.max(initial=0)) >= n_classes or min(ytr.min(initial=0),
                                                                       yte.min(initial=0)) < 0:
        raise DataFormatError(f"{name}: labels outside 0..{n_classes - 1}")
    xva = yva = None
    if val_fraction > 0:
        vi = stratified_indices(ytr, val_fraction, np.random.default_rng([seed, 1]),
                                at_least_one=False)
        keep = np.setdiff1d(np.arange(len(ytr)), vi)
        xva, yva, xtr, ytr = xtr[vi], ytr[vi], xtr[keep], ytr[keep]
    if fraction < 1.0:
        ti = stratified_indices(ytr, fraction, np.random.default_rng([seed, 2]))
        xtr, ytr = xtr[ti], ytr[ti]
    f32 = lambda a: None if a is None else a.astype(np.float32) / np.float32(scale)  # noqa: E731
    xtr, xva, xte = f32(xtr), f32(xva), f32(xte)
    c = xtr.shape[1]
    mean, std = np.zeros(c, np.float32), np.ones(c, np.float32)
    if normalize == "standardize":
        mean = xtr.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
        std = np.maximum(xtr.std(axis=(0, 2, 3), dtype=np.float64), 1e-8).astype(np.float32)
        norm = lambda a: None if a is None else (a - mean[:, None, None]) / std[:, None, None]  # noqa: E731
        xtr, xva, xte = norm(xtr), norm(xva), norm(xte)
    ds = Dataset(name=name, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte, n_classes=n_classes,
                 input_shape=tuple(xtr.shape[1:]), x_val=xva, y_val=yva, normalize=normalize,
                 mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
                 classes=_CLASSES.get(name, tuple(str(i) for i in range(n_classes))))
    return ds.reshaped((math.prod(ds.input_shape),)) if flatten else ds


def check_shape(dataset: Dataset, node_name: str, node_shape: Sequence[int],
                which: str = "input") -> Dataset:
    """Check that ``dataset`` fits a model node, before anything is compiled.

    ``which="input"``: the samples must have ``node_shape``; when only the layout differs
    (flat ``(784,)`` vs image ``(1, 28, 28)``, same values in C order) the data set is returned
    reshaped. ``which="target"``: the node must be ``(n_classes,)`` (one-hot labels).
    Raises :class:`DataShapeError` naming the node and both shapes.
    """
    want = tuple(int(d) for d in node_shape)
    if which in ("target", "label", "output"):
        if want != (dataset.n_classes,):
            raise DataShapeError(f"node '{node_name}' has shape {want} but the labels of "
                                 f"{dataset.name} are one-hot vectors of shape "
                                 f"{(dataset.n_classes,)}")
        return dataset
    if which != "input":
        raise ValueError(f"which must be 'input' or 'target', not {which!r}")
    have = tuple(dataset.input_shape)
    if have == want:
        return dataset
    squeeze = lambda s: tuple(d for d in s if d != 1)  # noqa: E731
    if math.prod(have) == math.prod(want) and (len(have) == 1 or len(want) == 1
                                               or squeeze(have) == squeeze(want)):
        return dataset.reshaped(want)
    hint = (" (images are channels-first (C, H, W))" if math.prod(have) == math.prod(want) else
            f" ({math.prod(want)} vs {math.prod(have)} values per sample)")
    raise DataShapeError(f"node '{node_name}' has shape {want} but {dataset.name} samples have "
                         f"shape {have}{hint}")


# --------------------------------------------------------------------------------------- batching
def batches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int, epoch: int,
            drop_last: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x_b, y_b)`` in a permutation drawn from ``(seed, epoch)``.

    With ``drop_last`` (training default) every batch has exactly ``batch_size`` rows (static
    shapes for jit); the ragged remainder changes with the epoch. Without it the last is smaller.
    """
    n = len(x)
    if len(y) != n:
        raise ValueError(f"x has {n} rows but y has {len(y)}")
    if batch_size <= 0 or (drop_last and batch_size > n):
        raise ValueError(f"batch_size {batch_size} does not fit {n} examples")
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    stop = n - n % batch_size if drop_last else n
    for i in range(0, stop, batch_size):
        idx = perm[i:i + batch_size]
        yield x[idx], y[idx]


def eval_batches(x: np.ndarray, y: np.ndarray,
                 batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(x_b, y_b, mask)`` in order, every example exactly once, all of ``batch_size`` rows.

    The last batch is padded with zeros (label 0); ``mask`` (bool) marks the real rows, so
    ``sum(mask)`` counts them and metrics are ``sum(correct * mask) / sum(mask)``.
    """
    n = len(x)
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, not {batch_size}")
    for i in range(0, n, batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        m = len(xb)
        mask = np.arange(batch_size) < m
        if m < batch_size:
            xb = np.concatenate([xb, np.zeros((batch_size - m,) + xb.shape[1:], xb.dtype)])
            yb = np.concatenate([yb, np.zeros((batch_size - m,) + yb.shape[1:], yb.dtype)])
        yield xb, yb, mask


def class_balanced_batches(x: np.ndarray, y: np.ndarray, batch_size: int, n_classes: int, *,
                           seed: int, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream-aligned batches: each holds ``k = batch_size // n_classes`` samples of every class.

    Within a batch samples are sorted by class: sample ``j`` of class ``c`` is at row
    ``c * k + j``, so row ``i`` always carries class ``i // k`` (the same "stream" every batch).
    Each class is shuffled by ``(seed, epoch)``; the epoch has ``min_c(n_c) // k`` batches (the
    smallest class bounds it; surplus samples of larger classes vary by epoch).
    """
    if batch_size % n_classes:
        raise ValueError(f"class-balanced batches need batch_size to be a multiple of n_classes: "
                         f"{batch_size} is not a multiple of {n_classes}")
    k = batch_size // n_classes
    rng = np.random.default_rng([seed, epoch])
    per_class = [rng.permutation(np.flatnonzero(y == c)) for c in range(n_classes)]
    n_batches = min(len(p) for p in per_class) // k
    if n_batches == 0:
        counts = {c: len(p) for c, p in enumerate(per_class)}
        raise ValueError(f"class-balanced batches need {k} samples of each class; counts: {counts}")
    for b in range(n_batches):
        idx = np.concatenate([p[b * k:(b + 1) * k] for p in per_class])
        yield x[idx], y[idx]
