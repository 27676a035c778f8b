"""IDX reader (valid, malformed, truncated, absurd), MNIST loading/download/cache, digits."""

import gzip
import hashlib
import struct
import tracemalloc

import numpy as np
import pytest

from jconv_experiments import data


def idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    dt = np.dtype(data.IDX_DTYPES[code])
    header = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return header + arr.astype(dt).tobytes()


def write(path, payload: bytes, gz: bool):
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    p = write(tmp_path / "img", idx_bytes(images), gz)
    np.testing.assert_array_equal(data.read_idx(p, expect_dims=(None, 28, 28)), images)
    words = np.array([[-3, 300], [7, -32768]], np.int16)  # big-endian multi-byte type
    got = data.read_idx(write(tmp_path / "w", idx_bytes(words, 0x0B), gz))
    assert got.dtype == np.int16 and got.dtype.isnative
    np.testing.assert_array_equal(got, words)


GOOD = idx_bytes(np.zeros((4, 3, 3), np.uint8))


@pytest.mark.parametrize("payload,msg", [
    (b"\x00\x00", "truncated: the magic number needs 4 bytes, the file has 2"),
    (b"\x01\x00\x08\x03" + GOOD[4:], "is not an IDX file"),
    (b"\x00\x00\x07\x03" + GOOD[4:], "is not an IDX file"),  # unknown type code
    (b"\x00\x00\x08\x00", "is not an IDX file"),  # zero dimensions
    (b"\x00\x00\x08\x09" + GOOD[4:], "is not an IDX file"),  # absurd rank
    (GOOD[:10], "truncated: the dimensions needs 12 bytes"),
    (GOOD[:-1], "truncated: data of shape (4, 3, 3) needs 36 bytes, the file has 35"),
    (GOOD + b"\x00", "has bytes after the 36"),
    (b"\x00\x00\x08\x03" + struct.pack(">III", 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), "more than max_bytes"),
    (b"\x00\x00\x0e\x02" + struct.pack(">II", 100_000, 100_000), "the header is corrupt"),  # 80 GB of f8
])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_rejects_bad_files(tmp_path, payload, msg, gz):
    p = write(tmp_path / "bad", payload, gz)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError) as e:
            data.read_idx(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert msg in str(e.value) and str(p) in str(e.value)
    assert peak < 8 << 20  # never allocates what an absurd header claims


def test_read_idx_bounds_a_plausible_but_lying_header(tmp_path):
    """A header claiming 900 MB (under the cap) on a tiny file: truncated, no 900 MB buffer."""
    p = write(tmp_path / "lie", b"\x00\x00\x08\x03" + struct.pack(">III", 900_000, 1000, 1) + b"\x00" * 100, False)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="truncated"):
            data.read_idx(p)
        assert tracemalloc.get_traced_memory()[1] < 8 << 20
    finally:
        tracemalloc.stop()


def test_read_idx_expect_dims_and_corrupt_gzip(tmp_path):
    p = write(tmp_path / "x", idx_bytes(np.zeros((2, 27, 28), np.uint8)), False)
    with pytest.raises(ValueError, match=r"dimensions \(2, 27, 28\), expected \(None, 28, 28\)"):
        data.read_idx(p, expect_dims=(None, 28, 28))
    gzpath = write(tmp_path / "g", GOOD, True)
    raw = gzpath.read_bytes()
    gzpath.write_bytes(raw[:-12])  # cut the gzip stream short
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(gzpath)
    with pytest.raises(FileNotFoundError, match="read_idx: path"):
        data.read_idx(tmp_path / "missing")


def make_mnist_dir(root, n_train=6, n_test=4, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte.gz": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte.gz": rng.integers(0, 10, (n_train,), dtype=np.uint8),
        "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, (n_test,), dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write(root / (name if gz else name.removesuffix(".gz")), idx_bytes(arr), gz)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_from_data_dir(tmp_path, gz):
    arrays = make_mnist_dir(tmp_path / "mnist", gz=gz)
    d = data.load_mnist(tmp_path / "mnist", cache_dir=tmp_path / "cache", download=False)
    x, y = d["train"]
    assert x.shape == (6, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int32
    np.testing.assert_allclose(x[..., 0], arrays["train-images-idx3-ubyte.gz"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(d["test"][1], arrays["t10k-labels-idx1-ubyte.gz"])


def test_load_mnist_checks_consistency(tmp_path):
    make_mnist_dir(tmp_path / "m")
    write(tmp_path / "m" / "t10k-labels-idx1-ubyte.gz", idx_bytes(np.zeros(3, np.uint8)), True)
    with pytest.raises(ValueError, match="test has 4 images but 3 labels"):
        data.load_mnist(tmp_path / "m", cache_dir=tmp_path / "c", download=False)


def _mirror(tmp_path):
    """A file:// mirror serving small IDX archives, and their checksums."""
    make_mnist_dir(tmp_path / "mirror")
    files = {n: (hashlib.sha256((tmp_path / "mirror" / n).read_bytes()).hexdigest(),
                 (tmp_path / "mirror" / n).stat().st_size) for n in data.MNIST_FILES}
    return (tmp_path / "mirror").as_uri() + "/", files


def test_download_verifies_checksum_and_caches(tmp_path):
    url, files = _mirror(tmp_path)
    cache = tmp_path / "cache"
    d = data.load_mnist(None, cache_dir=cache, mirrors=("http://127.0.0.1:9/", url), files=files)
    assert d["train"][0].shape == (6, 28, 28, 1)
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    # cached now: no mirror needed
    d2 = data.load_mnist(None, cache_dir=cache, mirrors=(), files=files)
    np.testing.assert_array_equal(d2["test"][1], d["test"][1])
    # a corrupted cache entry is detected by its checksum and fetched again
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"junk")
    data.load_mnist(None, cache_dir=cache, mirrors=(url,), files=files)
    assert hashlib.sha256((cache / "t10k-labels-idx1-ubyte.gz").read_bytes()).hexdigest() == files["t10k-labels-idx1-ubyte.gz"][0]


def test_download_rejects_wrong_checksum(tmp_path):
    url, files = _mirror(tmp_path)
    files = dict(files, **{"train-labels-idx1-ubyte.gz": ("0" * 64, 100)})
    with pytest.raises(FileNotFoundError) as e:
        data.load_mnist(None, cache_dir=tmp_path / "cache", mirrors=(url,), files=files)
    assert "sha256" in str(e.value) and str(tmp_path / "cache") in str(e.value)
    assert not (tmp_path / "cache" / "train-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "cache").glob("*.part"))


def test_no_network_names_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        data.load_mnist(tmp_path / "empty", cache_dir=tmp_path / "cache", mirrors=("http://127.0.0.1:9/",))
    msg = str(e.value)
    assert msg.startswith("load_mnist:") and str(tmp_path / "cache") in msg and "train-images-idx3-ubyte.gz" in msg
    with pytest.raises(FileNotFoundError, match="put the MNIST files"):
        data.load_mnist(tmp_path / "empty", cache_dir=tmp_path / "cache", download=False)


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("JCONV_DATA_DIR", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / "mnist"


def test_load_digits_fixed_split():
    d = data.load_digits()
    (xtr, ytr), (xte, yte) = d["train"], d["test"]
    assert xtr.shape == (1347, 28, 28, 1) and xte.shape == (450, 28, 28, 1)
    assert xtr.dtype == np.float32 and ytr.dtype == np.int32
    assert 0.0 <= xtr.min() and xtr.max() <= 1.0
    assert set(np.unique(yte)) == set(range(10))  # stratified
    d2 = data.load_digits()
    np.testing.assert_array_equal(d2["test"][1], yte)
    np.testing.assert_array_equal(d2["train"][0], xtr)
    with pytest.raises(ValueError, match="load_dataset: name"):
        data.load_dataset("cifar")
