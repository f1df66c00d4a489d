"""Small synthetic datasets in the official on-disk formats, and an isolated environment."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def isolated_roots(tmp_path, monkeypatch) -> Path:
    """No test sees the real TICKETLAB_DATA or ~/.cache; the cache is a fresh tmp folder."""
    monkeypatch.delenv("TICKETLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    return tmp_path / "xdg-cache" / "ticketlab" / "data"


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train: int = 20, n_test: int = 10, gz: bool = False, seed: int = 0) -> dict:
    """Write the four IDX files; returns the arrays so tests can compare."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": (rng.integers(0, 256, (n_train, 28, 28)), 2051),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10, 2049),
        "t10k-images-idx3-ubyte": (rng.integers(0, 256, (n_test, 28, 28)), 2051),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10, 2049),
    }
    for name, (array, magic) in arrays.items():
        data = idx_bytes(array, magic)
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return {name: array for name, (array, _) in arrays.items()}


def cifar_batch(n: int, seed: int, label_key: bytes = b"labels") -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"synthetic",
        label_key: [int(v) for v in rng.integers(0, 10, n)],
        b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
    }


def write_cifar10(folder: Path, n: int = 4) -> None:
    """The official layout (pickled dicts with bytes keys, protocol 2), minus ``filenames``."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(cifar_batch(n, i), protocol=2))
    (folder / "test_batch").write_bytes(pickle.dumps(cifar_batch(n, 99), protocol=2))
    meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
