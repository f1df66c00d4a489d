"""CIFAR-10 and CIFAR-100 from the official "python version" pickles.

The pickles are unpickled with an allow-list of the few numpy globals an array needs,
so a tampered file cannot run code. Each data row is 3,072 bytes: the R, G and B planes
of a 32x32 image, row-major, which is exactly (3, 32, 32) in memory.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.data.catalog import DatasetSpec, Resource, register_dataset
from ticketlab.data.dataset import ImageDataset
from ticketlab.errors import TicketlabError

try:  # numpy >= 2 moved the implementation; old pickles still name numpy.core.
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """What pickles written by Python 3 use to rebuild bytes; only the latin-1 codec is allowed."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


class _ArrayType:
    """What the name numpy.ndarray loads as: only an argument of `_empty_array`. Called itself (as
    np.ndarray(shape) would be) it would hand out memory the file never filled, so it refuses."""

    def __new__(cls, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError("refusing to build an array that is not filled from the file")


def _empty_array(subtype: type, shape: tuple, dtype: bytes) -> np.ndarray:
    """numpy pickles start each array empty, shape (0,), and fill it from bytes in the file (which checks
    their size); any other shape would have numpy allocate memory the file never supplies, left as it was."""
    if subtype is not _ArrayType or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"refusing an array of shape {shape!r} that is not filled from the file")
    return _reconstruct(np.ndarray, shape, dtype)


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy", "ndarray"): _ArrayType,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _encode_latin1,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}, which a CIFAR file never needs") from None


def read_pickle(path: Path) -> dict:
    """Unpickle a CIFAR file safely; any failure is a TicketlabError naming the file."""
    try:
        with open(path, "rb") as f:
            content = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise TicketlabError(f"cannot read {path}: {exc}") from exc
    except Exception as exc:  # a damaged pickle can fail in many ways; all mean "bad file"
        raise TicketlabError(_corrupt(path, f"{type(exc).__name__}: {exc}")) from exc
    if not isinstance(content, dict):
        raise TicketlabError(_corrupt(path, f"it holds a {type(content).__name__}, not a dict"))
    return content


def _text_keys(content: dict) -> dict:
    """The official files key by bytes; a copy re-pickled by Python 3 keys by str: read both alike."""
    return {(k.encode() if isinstance(k, str) else k): v for k, v in content.items()}


def _corrupt(path: Path, why: str) -> str:
    return f"{path} is damaged or not a CIFAR file ({why}); delete it so that it is downloaded again"


def _batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    content = _text_keys(read_pickle(path))
    data, labels = content.get(b"data"), content.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise TicketlabError(_corrupt(path, "no uint8 'data' array of shape (N, 3072)"))
    whole = (isinstance(labels, list) and all(type(v) is int for v in labels)) or (
        isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu")
    if not whole or len(labels) != len(data):
        raise TicketlabError(_corrupt(path, f"no {label_key.decode()!r} list of whole numbers, one label per image"))
    try:
        return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)
    except OverflowError:
        raise TicketlabError(_corrupt(path, "a label too large to be a class index")) from None


def _names(path: Path, key: bytes) -> tuple[str, ...]:
    names = _text_keys(read_pickle(path)).get(key)
    if not isinstance(names, list) or not names:
        raise TicketlabError(_corrupt(path, f"no {key.decode()!r} list"))
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def _parse(
    folder: Path, name: str, train_files: tuple[str, ...], test_file: str, meta: str, label_key: bytes, names_key: bytes
) -> ImageDataset:
    train = [_batch(folder / f, label_key) for f in train_files]
    test_x, test_y = _batch(folder / test_file, label_key)
    return ImageDataset.create(
        name=name,
        train_x=np.concatenate([x for x, _ in train]),
        train_y=np.concatenate([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        classes=_names(folder / meta, names_key),
    )


_CIFAR10_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))


def parse_cifar10(folder: Path) -> ImageDataset:
    return _parse(folder, "cifar10", _CIFAR10_TRAIN, "test_batch", "batches.meta", b"labels", b"label_names")


def parse_cifar100(folder: Path) -> ImageDataset:
    """The 100 fine classes (the 20 coarse superclasses are not used)."""
    return _parse(folder, "cifar100", ("train",), "test", "meta", b"fine_labels", b"fine_label_names")


CIFAR10 = DatasetSpec(
    name="cifar10",
    folder_candidates=("cifar-10-batches-py",),
    required_files=(*_CIFAR10_TRAIN, "test_batch", "batches.meta"),
    resources=(
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
            "cifar-10-python.tar.gz",
            "c58f30108f718f92721af3b95e74349a",
            extract=True,
        ),
    ),
    parse=parse_cifar10,
)

CIFAR100 = DatasetSpec(
    name="cifar100",
    folder_candidates=("cifar-100-python",),
    required_files=("train", "test", "meta"),
    resources=(
        Resource(
            "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
            "cifar-100-python.tar.gz",
            "eb9058c3a382ffc7106e4002c42a8d85",
            extract=True,
        ),
    ),
    parse=parse_cifar100,
)

register_dataset(CIFAR10.name)(CIFAR10)
register_dataset(CIFAR100.name)(CIFAR100)
