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
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ._batches import batches as batches
from ._batches import class_balanced_batches as class_balanced_batches
from ._batches import eval_batches as eval_batches
from ._batches import stratified_indices as stratified_indices
from ._data_files import CIFAR_TRAIN, IDX_DTYPES, IDX_FILES, find_cifar, find_idx
from ._data_files import open_stream, read_cifar_batch, read_exactly
from ._data_files import ChecksumError as ChecksumError
from ._data_files import DataError as DataError
from ._data_files import DataFormatError as DataFormatError
from ._data_files import DatasetNotFoundError as DatasetNotFoundError
from ._data_files import DataShapeError as DataShapeError
from ._data_files import write_idx as write_idx
from ._download import canonical
from ._download import DATASETS as DATASETS
from ._download import RESOURCES as RESOURCES
from ._download import cache_dir as cache_dir
from ._download import download as download
from ._download import fetch as fetch

#: Folders searched after data_dir and $PCGRAPH_DATA (tests monkeypatch this).
SYSTEM_DIRS: dict[str, tuple[str, ...]] = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}
_CLASSES = {
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                      "Sneaker", "Bag", "Ankle boot"),
    "kmnist": ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                "truck"),
}


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


def read_idx(path: str | os.PathLike, *, mmap: bool = False) -> np.ndarray:
    """Read an IDX file (raw or gzipped): magic ``0 0 dtype ndim``, big-endian int32 dims, data.

    The header is read first and the size it announces checked (against ``MAX_DATA_BYTES`` and
    the file) before the data is read, so a gzip bomb or a forged header allocates nothing.
    ``mmap``: a raw (not gzipped) file is memory-mapped (``np.memmap``), read only where indexed."""
    path = Path(path)
    try:
        with open_stream(path) as f:
            mapped = mmap and not isinstance(f, gzip.GzipFile)
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES:
                raise DataFormatError(
                    f"{path}: not an IDX file (bad magic number {head[:4].hex() or 'empty'};"
                    f" expected 00 00 <dtype 08/09/0b/0c/0d/0e> <ndim>)")
            dtype, ndim = np.dtype(IDX_DTYPES[head[2]]), head[3]
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
            buf = read_exactly(f, size + 1)
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f"{path}: cannot read ({e})") from e
    if len(buf) != size:
        what = "truncated" if len(buf) < size else "has trailing bytes"
        raise DataFormatError(f"{path}: IDX size mismatch ({what}): dims {dims} of {dtype.name} "
                              f"need {header + size} bytes, file has "
                              f"{header + len(buf) if len(buf) <= size else 'more'}")
    return np.frombuffer(buf, dtype).reshape(dims).astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------------------------------- loading
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
        layout = "DIR/{" + ",".join(IDX_FILES.values()) + "} (each raw or .gz)"
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
    finder = find_cifar if name == "cifar10" else find_idx
    hit = next(((d, f) for d in dirs if (f := finder(d)) is not None), None)
    if hit is None and download_:
        dest = download(name, data_dir, base_url=base_url)
        hit = (dest, finder(dest))
    if hit is None or hit[1] is None:
        raise _not_found(name, dirs)
    found = hit[1]
    if name == "cifar10":
        parts = [read_cifar_batch(found / f) for f in CIFAR_TRAIN]
        xte, yte = read_cifar_batch(found / "test_batch")
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
    name = canonical(name)
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


