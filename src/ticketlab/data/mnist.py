"""MNIST and Fashion-MNIST from the official IDX files, gzipped or not.

IDX: a big-endian header (magic 2051 for images, 2049 for labels, then one uint32 per
dimension) followed by the raw uint8 values. Every size is checked against the header,
so a truncated or mismatched file is reported by name instead of producing wrong data.
"""

from __future__ import annotations

import gzip
import math
import zlib
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ticketlab.data.catalog import DatasetSpec, Resource, register_dataset
from ticketlab.data.dataset import ImageDataset
from ticketlab.data.locate import REFETCH
from ticketlab.errors import TicketlabError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def idx_path(folder: Path, name: str) -> Path:
    """The file for ``name`` in ``folder``: uncompressed if present (faster), else ``name.gz``."""
    plain = folder / name
    return plain if plain.is_file() else folder / f"{name}.gz"


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file of uint8 values with the expected ``magic``; shape comes from its header."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read(header)
            if len(raw) >= 4 and int.from_bytes(raw[:4], "big") == magic and len(raw) == header:
                dims = tuple(int.from_bytes(raw[i:i + 4], "big") for i in range(4, header, 4))
                if math.prod(dims) > _MAX_BYTES:
                    raise TicketlabError(_corrupt(path, f"its header promises {dims} values, over 4 GiB"))
                raw += _read_at_most(f, math.prod(dims) + 1)  # one byte more tells a file that is too long
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise TicketlabError(_corrupt(path, f"{type(exc).__name__}: {exc}")) from exc
    if len(raw) < 4:
        raise TicketlabError(_corrupt(path, f"only {len(raw)} bytes"))
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise TicketlabError(_corrupt(path, f"magic number {found}, expected {magic}"))
    if len(raw) < header:
        raise TicketlabError(_corrupt(path, "header is cut short"))
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise TicketlabError(_corrupt(path, f"{len(raw)} bytes where the header {dims} implies {expected}"))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


_MAX_BYTES = 1 << 32


def _read_at_most(f: BinaryIO, size: int) -> bytes:
    """Up to `size` bytes, in pieces: memory follows what the file holds, not what its header claims,
    so a small file that decompresses to gigabytes is refused having read only that much."""
    pieces = []
    while size > 0 and (piece := f.read(min(size, 1 << 24))):
        pieces.append(piece)
        size -= len(piece)
    return b"".join(pieces)


def _corrupt(path: Path, why: str) -> str:
    return f"{path} is damaged or not an IDX file ({why}); delete it, {REFETCH}"


def _split(folder: Path, prefix: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    images_path = idx_path(folder, f"{prefix}-images-idx3-ubyte")
    labels_path = idx_path(folder, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(images_path, IMAGES_MAGIC), read_idx(labels_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise TicketlabError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels; "
            f"they belong to different downloads; delete both, {REFETCH}"
        )
    if len(labels) and int(labels.max()) >= classes:  # IDX labels are unsigned bytes: never below 0
        raise TicketlabError(_corrupt(labels_path, f"a label {int(labels.max())}, not a class index 0..{classes - 1}"))
    return images[:, None], labels


def parse_idx_folder(folder: Path, name: str, classes: tuple[str, ...]) -> ImageDataset:
    train_x, train_y = _split(folder, "train", len(classes))
    test_x, test_y = _split(folder, "t10k", len(classes))
    return ImageDataset.create(name, train_x, train_y, test_x, test_y, classes)


def _spec(
    name: str, folders: tuple[str, ...], base_url: str, md5s: tuple[str, ...], classes: tuple[str, ...]
) -> DatasetSpec:
    return DatasetSpec(
        name=name,
        folder_candidates=folders,
        required_files=FILES,
        resources=tuple(
            Resource(f"{base_url}{f}.gz", f"{f}.gz", md5, extract=False) for f, md5 in zip(FILES, md5s, strict=True)
        ),
        parse=partial(parse_idx_folder, name=name, classes=classes),
        alt_suffixes=(".gz",),
    )


MNIST = _spec(
    "mnist",
    ("mnist", "MNIST/raw"),
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3",
        "ec29112dd5afa0611ce80d1b7f02629c",
    ),
    DIGITS,
)

FASHION_MNIST = _spec(
    "fashion_mnist",
    ("fashion-mnist", "FashionMNIST/raw"),
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79",
        "bb300cfdad3c16e7a12a480ee83cd310",
    ),
    FASHION_CLASSES,
)

register_dataset(MNIST.name)(MNIST)
register_dataset(FASHION_MNIST.name)(FASHION_MNIST)
