"""Data set names and downloads: the known data sets and their aliases, official mirrors and
checksums (``RESOURCES``), and an atomic, checksummed ``fetch``."""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ._data_files import ChecksumError, DataError, DataFormatError

DATASETS = ("digits", "fashion-mnist", "mnist", "kmnist", "cifar10")
_ALIASES = {"fashion": "fashion-mnist", "fmnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "cifar-10": "cifar10", "k-mnist": "kmnist"}
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


def canonical(name: str) -> str:
    key = name.lower().replace("_", "-")
    key = _ALIASES.get(key, key)
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return key


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
    name = canonical(name)
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
