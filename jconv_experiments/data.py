"""Data for the seed's MNIST model: real MNIST (IDX files) and an embedded digits set.

* :func:`load_mnist` reads the four standard IDX files (``train-images-idx3-ubyte.gz`` ...) from
  ``data_dir`` when they are there (``.gz`` or uncompressed); otherwise from a cache directory,
  downloading them once from a mirror and checking each file's SHA-256. With no network it
  fails with a message naming the directory to put the files in.
* :func:`read_idx` validates an IDX file's magic number, dimensions and size before it
  allocates anything, and reads in bounded chunks: a malformed, truncated or absurd header is a
  clear ``ValueError``, never a crash or a huge allocation.
* :func:`load_digits` needs no network: scikit-learn's bundled handwritten digits (1,797 real
  8x8 scans), resized to 28x28 so the seed's model runs unchanged, with a fixed stratified split.

Every loader returns ``{"train": (images, labels), "test": (images, labels)}`` with images
``float32 (N, 28, 28, 1)`` in [0, 1] and labels ``int32 (N,)``.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

__all__ = ["read_idx", "load_mnist", "load_digits", "load_dataset", "MNIST_FILES", "MIRRORS", "default_cache_dir"]

# type code -> big-endian numpy dtype (the IDX format's table)
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_BYTES = 1 << 30  # MNIST's largest file is 47 MB uncompressed
_CHUNK = 1 << 20

# file -> (sha256 of the .gz, size in bytes); the archives every MNIST mirror serves.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": ("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9_912_422),
    "train-labels-idx1-ubyte.gz": ("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28_881),
    "t10k-images-idx3-ubyte.gz": ("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1_648_877),
    "t10k-labels-idx1-ubyte.gz": ("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4_542),
}
MIRRORS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
)


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------


def _open(path: Path):
    with open(path, "rb") as f:
        gz = f.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if gz else open(path, "rb")


def _read_exact(f, n: int, path: Path, what: str) -> bytes:
    """Read exactly n bytes in bounded chunks (memory grows only with data actually present)."""
    parts, got = [], 0
    while got < n:
        try:
            chunk = f.read(min(_CHUNK, n - got))
        except (EOFError, OSError, gzip.BadGzipFile) as e:
            raise ValueError(f"read_idx: {path} is truncated or corrupt while reading {what}: {e}") from e
        if not chunk:
            raise ValueError(f"read_idx: {path} is truncated: {what} needs {n} bytes, the file has {got}")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def read_idx(path, *, expect_dims: tuple | None = None, max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a native-endian numpy array.

    ``expect_dims``: the expected shape with ``None`` for "any" (e.g. ``(None, 28, 28)``); the
    header is checked against it, and its data size against ``max_bytes``, before reading data.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"read_idx: path (={path}) is not a file")
    with _open(path) as f:
        magic = _read_exact(f, 4, path, "the magic number")
        zero, code, ndim = magic[:2], magic[2], magic[3]
        if zero != b"\x00\x00" or code not in IDX_DTYPES or not 1 <= ndim <= 4:
            raise ValueError(
                f"read_idx: {path} is not an IDX file: magic number {magic.hex()} must be "
                f"00 00 <type in {sorted(hex(c) for c in IDX_DTYPES)}> <ndim 1..4>"
            )
        raw = _read_exact(f, 4 * ndim, path, "the dimensions")
        dims = tuple(int.from_bytes(raw[i:i + 4], "big") for i in range(0, 4 * ndim, 4))
        if expect_dims is not None:
            if len(expect_dims) != ndim or any(e is not None and e != d for e, d in zip(expect_dims, dims)):
                raise ValueError(f"read_idx: {path} has dimensions {dims}, expected {tuple(expect_dims)} (None: any)")
        dtype = np.dtype(IDX_DTYPES[code])
        nbytes = math.prod(dims) * dtype.itemsize
        if nbytes > max_bytes:
            raise ValueError(
                f"read_idx: {path} header claims dimensions {dims} = {nbytes:,} bytes, more than "
                f"max_bytes (={max_bytes:,}); the header is corrupt"
            )
        data = _read_exact(f, nbytes, path, f"data of shape {dims}")
        try:
            extra = f.read(1)
        except (EOFError, OSError, gzip.BadGzipFile) as e:
            raise ValueError(f"read_idx: {path} is corrupt after its data: {e}") from e
        if extra:
            raise ValueError(f"read_idx: {path} has bytes after the {nbytes:,} its header {dims} accounts for")
    return np.frombuffer(data, dtype).reshape(dims).astype(dtype.newbyteorder("="))


# --------------------------------------------------------------------------------------------
# MNIST
# --------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$JCONV_DATA_DIR/mnist`` if set, else ``~/.cache/jconv/mnist``."""
    root = os.environ.get("JCONV_DATA_DIR")
    return Path(root) / "mnist" if root else Path.home() / ".cache" / "jconv" / "mnist"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(name: str, dest: Path, mirrors, files) -> None:
    """Fetch ``name`` from the first mirror that serves it with the right SHA-256."""
    sha, size = files[name]
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    failures = []
    for mirror in mirrors:
        url = mirror + name
        try:
            with urllib.request.urlopen(url, timeout=30) as r, open(tmp, "wb") as out:
                got = 0
                for chunk in iter(lambda: r.read(_CHUNK), b""):
                    got += len(chunk)
                    if got > 2 * size:
                        raise ValueError(f"more than {2 * size:,} bytes")
                    out.write(chunk)
        except (urllib.error.URLError, OSError, ValueError) as e:
            failures.append(f"{url}: {e}")
            tmp.unlink(missing_ok=True)
            continue
        digest = _sha256(tmp)
        if digest != sha:
            failures.append(f"{url}: sha256 {digest} != expected {sha}")
            tmp.unlink(missing_ok=True)
            continue
        tmp.replace(dest)
        return
    raise FileNotFoundError(
        f"load_mnist: {name} is not in the cache directory and could not be downloaded "
        f"({'; '.join(failures) or 'no mirrors'}). Put the MNIST files "
        f"({', '.join(files)}) into {dest.parent} (or point config.data_dir at a directory "
        "holding them) and run again."
    )


def _locate(name: str, data_dir, cache_dir: Path, download: bool, mirrors, files) -> Path:
    if data_dir is not None:
        for cand in (Path(data_dir) / name, Path(data_dir) / name.removesuffix(".gz")):
            if cand.is_file():
                return cand
    cached = cache_dir / name
    if cached.is_file():
        if _sha256(cached) == files[name][0]:
            return cached
        cached.unlink()  # a corrupt or partial cache entry: fetch it again
    if not download:
        where = f"{data_dir} or {cache_dir}" if data_dir is not None else str(cache_dir)
        raise FileNotFoundError(f"load_mnist: {name} not found; put the MNIST files ({', '.join(files)}) into {where}")
    _download(name, cached, mirrors, files)
    return cached


def load_mnist(data_dir=None, *, cache_dir=None, download: bool = True, mirrors=MIRRORS, files=MNIST_FILES) -> dict:
    """MNIST's 60,000 training and 10,000 test images. See the module docstring."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    p = {name: _locate(name, data_dir, cache_dir, download, mirrors, files) for name in files}
    out = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = read_idx(p[f"{prefix}-images-idx3-ubyte.gz"], expect_dims=(None, 28, 28))
        labels = read_idx(p[f"{prefix}-labels-idx1-ubyte.gz"], expect_dims=(None,))
        if images.dtype != np.uint8 or labels.dtype != np.uint8:
            raise ValueError(f"load_mnist: {split} files must hold unsigned bytes, got {images.dtype}/{labels.dtype}")
        if len(images) != len(labels):
            raise ValueError(f"load_mnist: {split} has {len(images)} images but {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise ValueError(f"load_mnist: {split} labels must be 0..9, found {int(labels.max())}")
        out[split] = ((images.astype(np.float32) / 255.0)[..., None], labels.astype(np.int32))
    return out


# --------------------------------------------------------------------------------------------
# The embedded digits set
# --------------------------------------------------------------------------------------------


def load_digits(*, size: int = 28, test_fraction: float = 0.25, seed: int = 0) -> dict:
    """scikit-learn's 1,797 8x8 digits, resized (bilinear) to ``size`` x ``size``, split
    ``test_fraction`` stratified by class with a fixed ``seed`` (1,347 train / 450 test).

    Computed once per process (the arrays are read-only)."""
    return _digits(size, test_fraction, seed)


@functools.lru_cache(maxsize=4)
def _digits(size: int, test_fraction: float, seed: int) -> dict:
    import jax
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    images = (d.images / 16.0).astype(np.float32)
    images = np.asarray(jax.image.resize(images, (len(images), size, size), method="linear"))
    images = np.clip(images, 0.0, 1.0)[..., None]
    labels = d.target.astype(np.int32)
    xtr, xte, ytr, yte = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    for a in (xtr, xte, ytr, yte):
        a.flags.writeable = False
    return {"train": (xtr, ytr), "test": (xte, yte)}


def load_dataset(name: str, *, data_dir=None, cache_dir=None) -> dict:
    """``"digits"`` (embedded) or ``"mnist"`` (IDX files)."""
    if name == "digits":
        return load_digits()
    if name == "mnist":
        return load_mnist(data_dir, cache_dir=cache_dir)
    raise ValueError(f"load_dataset: name (={name!r}) must be 'digits' or 'mnist'")
