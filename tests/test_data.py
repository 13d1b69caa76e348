"""Tests of pcgraph.data: loaders (on small files the tests write), downloads from a local HTTP
server, splits and batching. No internet; no JAX."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest

from pcgraph import data as D


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """No user data or system folders leak in: empty env, cache in tmp, system dirs off."""
    monkeypatch.delenv("PCGRAPH_DATA", raising=False)
    monkeypatch.delenv("PCGRAPH_DATA_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion-mnist": (str(tmp_path / "no-system"),)})


def write_fake_idx(d: Path, n_train=40, n_test=20, gz=True, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for split, n in (("train", n_train), ("t10k", n_test)):
        D.write_idx(d / f"{split}-images-idx3-ubyte{ext}",
                    rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        D.write_idx(d / f"{split}-labels-idx1-ubyte{ext}", (np.arange(n) % 10).astype(np.uint8))
    return d


# ------------------------------------------------------------------------------------------ digits
def test_digits_shapes_split_and_normalisation():
    ds = D.load("digits")
    assert ds.input_shape == (64,) and ds.n_classes == 10
    assert (len(ds.x_train), len(ds.x_test)) == (1437, 360)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-4
    assert set(np.unique(ds.y_test)) == set(range(10))
    unit = D.load("digits", normalize="unit", flatten=False)
    assert unit.input_shape == (1, 8, 8)
    assert unit.x_train.min() == 0.0 and unit.x_train.max() == 1.0
    assert np.allclose(ds.unnormalize(ds.x_train), unit.x_train.reshape(-1, 64), atol=1e-5)
    oh = ds.one_hot(ds.y_train[:5])
    assert oh.shape == (5, 10) and np.array_equal(oh.argmax(1), ds.y_train[:5])


def test_digits_deterministic_fraction_and_val():
    a = D.load("digits", fraction=0.25, val_fraction=0.1, seed=3)
    b = D.load("digits", fraction=0.25, val_fraction=0.1, seed=3)
    c = D.load("digits", fraction=0.25, val_fraction=0.1, seed=4)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_val, b.y_val)
    assert not np.array_equal(a.y_train, c.y_train) or not np.array_equal(a.x_train, c.x_train)
    full = D.load("digits", normalize="unit")
    counts = np.bincount(full.y_train, minlength=10)
    sub = D.load("digits", normalize="unit", fraction=0.25, seed=3)
    assert np.array_equal(np.bincount(sub.y_train, minlength=10), np.round(counts * 0.25))
    same = D.load("digits", seed=9)  # the test set never changes (its standardisation may)
    assert np.array_equal(a.y_test, same.y_test)
    assert np.allclose(a.unnormalize(a.x_test), same.unnormalize(same.x_test), atol=1e-5)
    half = D.load("digits", normalize="unit", fraction=0.5, seed=3)
    as_rows = lambda x: {r.tobytes() for r in x}  # noqa: E731 - 25% subset of the 50% subset
    assert as_rows(sub.x_train) <= as_rows(half.x_train)
    v = D.load("digits", val_fraction=0.2)
    assert len(v.x_val) + len(v.x_train) == 1437 and abs(len(v.x_val) - 287) <= 10


def test_bad_arguments():
    with pytest.raises(D.DataError, match="unknown data set"):
        D.load("imagenet")
    with pytest.raises(ValueError):
        D.load("digits", fraction=0)
    with pytest.raises(ValueError):
        D.load("digits", normalize="zca")


# --------------------------------------------------------------------------------------------- IDX
@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = tmp_path / ("a.idx" + (".gz" if gz else ""))
    D.write_idx(p, a)
    assert np.array_equal(D.read_idx(p), a)
    f = np.linspace(-1, 1, 6).astype(np.float32).reshape(3, 2)
    D.write_idx(tmp_path / "f.idx", f)
    assert np.array_equal(D.read_idx(tmp_path / "f.idx"), f)


def test_idx_bad_magic_and_truncation(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(D.DataFormatError, match="bad magic"):
        D.read_idx(bad)
    short = tmp_path / "short.gz"
    with gzip.open(short, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + np.asarray([10], ">u4").tobytes() + b"\x00" * 5)
    with pytest.raises(D.DataFormatError, match="size mismatch"):
        D.read_idx(short)


def test_fashion_from_data_dir_raw_files(tmp_path):
    write_fake_idx(tmp_path / "fm", gz=False)
    ds = D.load("fashion-mnist", data_dir=tmp_path / "fm", flatten=False)
    assert ds.input_shape == (1, 28, 28) and (ds.n_train, len(ds.x_test)) == (40, 20)
    assert ds.classes[0] == "T-shirt/top"


def test_fashion_via_env_and_system_dir(tmp_path, monkeypatch):
    write_fake_idx(tmp_path / "root" / "fashion-mnist", seed=1)
    monkeypatch.setenv("PCGRAPH_DATA", str(tmp_path / "root"))
    ds = D.load("fashion_mnist", normalize="unit")
    assert ds.input_shape == (784,) and ds.n_train == 40
    monkeypatch.delenv("PCGRAPH_DATA")
    system = write_fake_idx(tmp_path / "usr-share", seed=2)
    monkeypatch.setattr(D, "SYSTEM_DIRS", {"fashion-mnist": (str(system),)})
    ds2 = D.load("fashion-mnist", normalize="unit")
    raw = D.read_idx(system / "train-images-idx3-ubyte.gz")
    assert np.allclose(ds2.x_train, raw.reshape(40, -1) / 255.0)
    with pytest.raises(D.DatasetNotFoundError):  # the system folder is only for Fashion-MNIST
        D.load("mnist")


def test_missing_messages(tmp_path):
    with pytest.raises(D.DataError) as e:
        D.load("fashion-mnist", data_dir=tmp_path / "nothing")
    msg = str(e.value)
    assert "apt-get install -y dataset-fashion-mnist" in msg and "--data-dir" in msg
    assert "PCGRAPH_DATA" in msg and str(tmp_path / "nothing") in msg
    with pytest.raises(D.DatasetNotFoundError) as e:
        D.load("kmnist")
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and "--download" in msg and "download=True" in msg
    with pytest.raises(D.DatasetNotFoundError, match="cifar-10-batches-py"):
        D.load("cifar10")


SYSTEM_FM = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not (SYSTEM_FM / "t10k-labels-idx1-ubyte.gz").exists(),
                    reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_when_installed():
    ds = D.load("fashion-mnist", data_dir=SYSTEM_FM, fraction=0.25)
    assert (ds.n_train, len(ds.x_test), ds.input_shape) == (15000, 10000, (784,))
    assert np.array_equal(np.bincount(ds.y_train), np.full(10, 1500))
    assert abs(ds.mean[0] - 0.286) < 0.01 and abs(ds.std[0] - 0.353) < 0.01


# ------------------------------------------------------------------------------------------- CIFAR
def _cifar_batch(n, seed):
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": list(rng.integers(0, 10, n))}


def write_fake_cifar(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        with open(d / name, "wb") as f:
            pickle.dump(_cifar_batch(6, i), f)
    return d


def test_cifar_pickles(tmp_path):
    write_fake_cifar(tmp_path / "c" / "cifar-10-batches-py")
    ds = D.load("cifar10", data_dir=tmp_path / "c", flatten=False)
    assert ds.input_shape == (3, 32, 32) and ds.n_train == 30 and len(ds.x_test) == 6
    assert len(ds.mean) == 3 and np.allclose(ds.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    first = _cifar_batch(6, 0)
    unit = D.load("cifar10", data_dir=tmp_path / "c", flatten=False, normalize="unit")
    assert np.allclose(unit.x_train[:6], first[b"data"].reshape(6, 3, 32, 32) / 255.0)
    assert D.load("cifar10", data_dir=tmp_path / "c").input_shape == (3072,)


# -------------------------------------------------------------------------------------- downloads
@pytest.fixture
def http_dir(tmp_path):
    """A ThreadingHTTPServer on 127.0.0.1 serving a tmp folder; yields (folder, base_url)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_download_mnist_with_checksums(http_dir, tmp_path, monkeypatch):
    root, url = http_dir
    write_fake_idx(root)
    files = {p.name: _md5(p) for p in root.iterdir()}
    files["train-images-idx3-ubyte.gz"] = hashlib.sha256(
        (root / "train-images-idx3-ubyte.gz").read_bytes()).hexdigest()  # SHA-256 works too
    monkeypatch.setitem(D.RESOURCES, "mnist", {"mirrors": ("http://0.invalid/",), "files": files})
    dest = tmp_path / "data"
    ds = D.load("mnist", data_dir=dest, download=True, base_url=url)
    assert ds.n_train == 40 and sorted(p.name for p in dest.iterdir()) == sorted(files)
    # the environment variable works as well; files already there are not fetched again
    monkeypatch.setenv("PCGRAPH_DATA_URL", url)
    assert D.download("mnist", tmp_path / "data2") == tmp_path / "data2"
    assert D.load("mnist", data_dir=tmp_path / "data2").n_train == 40


def test_download_checksum_mismatch_leaves_nothing(http_dir, tmp_path, monkeypatch):
    root, url = http_dir
    write_fake_idx(root)
    files = {p.name: _md5(p) for p in root.iterdir()}
    files["t10k-labels-idx1-ubyte.gz"] = "0" * 32
    monkeypatch.setitem(D.RESOURCES, "kmnist", {"mirrors": (url,), "files": files})
    dest = tmp_path / "k"
    with pytest.raises(D.ChecksumError) as e:
        D.load("kmnist", data_dir=dest, download=True)
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz" in msg and "0" * 32 in msg
    assert _md5(root / "t10k-labels-idx1-ubyte.gz") in msg
    assert not (dest / "t10k-labels-idx1-ubyte.gz").exists()
    assert not [p for p in dest.iterdir() if p.name.endswith(".part")]


def test_download_unreachable_and_cifar_tarball(http_dir, tmp_path, monkeypatch):
    root, url = http_dir
    with pytest.raises(D.DataError, match="could not download"):
        D.download("mnist", tmp_path / "x", base_url=url + "missing/")
    src = write_fake_cifar(tmp_path / "build" / "cifar-10-batches-py")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(src, arcname="cifar-10-batches-py")
    (root / "cifar-10-python.tar.gz").write_bytes(buf.getvalue())
    monkeypatch.setitem(D.RESOURCES, "cifar10", {
        "mirrors": (url,), "files": {"cifar-10-python.tar.gz": _md5(root / "cifar-10-python.tar.gz")}})
    ds = D.load("cifar10", data_dir=tmp_path / "c10", download=True, flatten=False)
    assert ds.input_shape == (3, 32, 32) and ds.n_train == 30


# --------------------------------------------------------------------------------------- batching
def test_batches_static_seeded_and_complete():
    x = np.arange(103, dtype=np.float32)[:, None]
    y = np.arange(103) % 10
    e0 = list(D.batches(x, y, 10, seed=1, epoch=0))
    assert len(e0) == 10 and all(b[0].shape == (10, 1) and b[1].shape == (10,) for b in e0)
    again = list(D.batches(x, y, 10, seed=1, epoch=0))
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(e0, again))
    e1 = list(D.batches(x, y, 10, seed=1, epoch=1))
    assert not np.array_equal(np.concatenate([b[0] for b in e0]), np.concatenate([b[0] for b in e1]))
    seen = np.concatenate([b[0][:, 0] for b in e0])
    assert len(set(seen)) == 100 and np.array_equal(y[seen.astype(int)], np.concatenate([b[1] for b in e0]))
    full = np.concatenate([b[0][:, 0] for b in D.batches(x, y, 10, seed=1, epoch=0, drop_last=False)])
    assert sorted(full) == list(range(103))
    with pytest.raises(ValueError):
        list(D.batches(x, y, 200, seed=0, epoch=0))


def test_eval_batches_cover_every_example_once():
    x = np.arange(23, dtype=np.float32).reshape(23, 1)
    y = np.arange(23) % 10
    out = list(D.eval_batches(x, y, 8))
    assert len(out) == 3 and all(b[0].shape == (8, 1) and b[2].shape == (8,) for b in out)
    assert [int(m.sum()) for _, _, m in out] == [8, 8, 7]
    real = np.concatenate([xb[m] for xb, _, m in out])[:, 0]
    assert np.array_equal(real, np.arange(23))


def test_class_balanced_batches():
    rng = np.random.default_rng(0)
    y = rng.permutation(np.repeat(np.arange(10), [12, 15, 13, 12, 20, 12, 14, 12, 16, 30]))
    x = np.arange(len(y), dtype=np.float32)[:, None]
    bs = list(D.class_balanced_batches(x, y, 40, 10, seed=0, epoch=0))
    assert len(bs) == 3  # smallest class has 12 = 3 * k samples
    for xb, yb in bs:
        assert np.array_equal(yb, np.repeat(np.arange(10), 4))  # sample j of class c at c*4 + j
        assert np.array_equal(y[xb[:, 0].astype(int)], yb)
    used = np.concatenate([b[0][:, 0] for b in bs])
    assert len(set(used)) == len(used)
    other = list(D.class_balanced_batches(x, y, 40, 10, seed=0, epoch=1))
    assert not np.array_equal(bs[0][0], other[0][0])
    with pytest.raises(ValueError, match="multiple of"):
        list(D.class_balanced_batches(x, y, 45, 10, seed=0, epoch=0))


# ------------------------------------------------------------------------------------ check_shape
def test_check_shape_reshapes_and_errors():
    ds = D.load("digits")
    assert D.check_shape(ds, "x", (64,)) is ds
    img = D.check_shape(ds, "x", (1, 8, 8))
    assert img.input_shape == (1, 8, 8) and img.x_test.shape == (360, 1, 8, 8)
    assert np.array_equal(img.x_train.reshape(-1, 64), ds.x_train)
    assert D.check_shape(img, "x", (64,)).x_train.shape == (1437, 64)
    with pytest.raises(D.DataShapeError) as e:
        D.check_shape(ds, "pixels", (784,))
    assert "pixels" in str(e.value) and "(784,)" in str(e.value) and "(64,)" in str(e.value)
    with pytest.raises(D.DataShapeError, match="'y'.*\\(5,\\).*\\(10,\\)"):
        D.check_shape(ds, "y", (5,), which="target")
    assert D.check_shape(ds, "y", (10,), which="target") is ds
    with pytest.raises(D.DataShapeError, match="channels-first"):  # same size, other layout
        D.check_shape(img, "x", (2, 4, 8))


def test_cli_download_flag(http_dir, tmp_path, monkeypatch, capsys):
    """`pcgraph train --download` fetches a missing data set; without it the error says how."""
    from pcgraph._cli import main

    root, url = http_dir
    write_fake_idx(root)
    files = {p.name: _md5(p) for p in root.iterdir()}
    monkeypatch.setitem(D.RESOURCES, "mnist", {"mirrors": (url,), "files": files})
    model = tmp_path / "tiny.pcg"
    model.write_text("model tiny {\n  node x: [784]\n  node y: [10] energy = categorical\n"
                     "  x -> y : dense\n  query train { clamp x, y }\n"
                     "  query test { clamp x; read y }\n}\n")
    dest = tmp_path / "data"
    args = ["train", str(model), "--data", "mnist", "--data-dir", str(dest), "--epochs", "1",
            "--batch-size", "8", "--out", str(tmp_path / "run")]
    assert main(args) == 2  # a usage/input error, with the way out in the message
    assert "--download" in capsys.readouterr().err
    assert main(args + ["--download"]) == 0
    assert sorted(p.name for p in dest.iterdir()) == sorted(files)
