"""CIFAR-10 and CIFAR-100 from the official "python version" pickles.

The pickles are unpickled with an allow-list of the few numpy globals an array needs,
so a tampered file cannot run code, and the arrays are built here from a checked integer dtype and
exactly the bytes their shape takes: numpy never sees a state from the file, which it would trust.
Each data row is 3,072 bytes: the R, G and B planes of a 32x32 image, row-major, which is exactly
(3, 32, 32) in memory.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from ticketlab.data.catalog import DatasetSpec, Resource, register_dataset
from ticketlab.data.dataset import ImageDataset
from ticketlab.data.locate import REFETCH
from ticketlab.errors import TicketlabError


def _encode_latin1(text: str, encoding: str = "latin1") -> bytes:
    """What pickles written by Python 3 use to rebuild bytes; only the latin-1 codec is allowed."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return text.encode("latin1")


def _text(value: Any) -> Any:
    """Python 2's pickles (the official files) hold byte strings where Python 3's hold str."""
    return value.decode("latin1") if isinstance(value, bytes) else value


_CODES = {"b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8"}  # all a CIFAR file holds: pixels and labels


class _Dtype:
    """What numpy.dtype(code, align, copy) loads as. numpy's own dtype and array states are never handed to
    numpy: a crafted state (an object dtype, a shape past its data) makes numpy read memory it does not own.
    Only a checked integer code and byte order go into the dtype the array is built with."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if _text(code) not in _CODES:
            raise pickle.UnpicklingError(f"refusing dtype {code!r}, which a CIFAR file never needs")
        self.code, self.order = _text(code), "|"

    def __setstate__(self, state: Any) -> None:
        if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                and _text(state[1]) in ("<", ">", "|", "=") and state[2:] == (None, None, None, -1, -1, 0)):
            raise pickle.UnpicklingError(f"refusing the dtype state {state!r} of a plain integer type")
        self.order = _text(state[1])

    def numpy(self) -> np.dtype:
        return np.dtype(self.code).newbyteorder(self.order if self.order in ("<", ">") else "=")


class _ArrayType:
    """What the name numpy.ndarray loads as: only an argument of `_empty_array`. Called itself (as
    np.ndarray(shape) would be) it would hand out memory the file never filled, so it refuses."""

    def __new__(cls, *args: Any, **kwargs: Any) -> None:
        raise pickle.UnpicklingError("refusing to build an array that is not filled from the file")


class _Array:
    """What numpy's _reconstruct loads as: an array to be filled by its state (pickle's BUILD), which must
    hold exactly the bytes its shape and dtype take; `read_pickle` swaps in the numpy array."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not (isinstance(state, tuple) and len(state) == 4):
            raise pickle.UnpicklingError("refusing an array state that is not (shape, dtype, order, bytes)")
        shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)
                and isinstance(dtype, _Dtype) and isinstance(raw, bytes) and fortran in (0, 1)):
            raise pickle.UnpicklingError("refusing an array state that is not (shape, dtype, order, bytes)")
        dt = dtype.numpy()
        if len(raw) != int(np.prod(shape, dtype=object)) * dt.itemsize:
            raise pickle.UnpicklingError(f"refusing an array of shape {shape} and dtype {dt} "
                                         f"filled from {len(raw)} bytes")
        self.array = np.ndarray(shape, dt, buffer=raw, order="F" if fortran else "C").copy()


def _empty_array(subtype: type, shape: tuple, dtype: bytes) -> _Array:
    """numpy pickles start each array empty, shape (0,), and fill it from bytes in the file; any other
    start would be memory the file never supplies."""
    if subtype is not _ArrayType or tuple(shape) != (0,):
        raise pickle.UnpicklingError(f"refusing an array of shape {shape!r} that is not filled from the file")
    return _Array()


_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _empty_array,
    ("numpy._core.multiarray", "_reconstruct"): _empty_array,
    ("numpy", "ndarray"): _ArrayType,
    ("numpy", "dtype"): _Dtype,
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
    if any(isinstance(v, _Array) and v.array is None for v in content.values()):
        raise TicketlabError(_corrupt(path, "an array that is not filled from the file"))
    return {k: v.array if isinstance(v, _Array) else v for k, v in content.items()}


def _text_keys(content: dict) -> dict:
    """The official files key by bytes; a copy re-pickled by Python 3 keys by str: read both alike."""
    return {(k.encode() if isinstance(k, str) else k): v for k, v in content.items()}


def _corrupt(path: Path, why: str) -> str:
    # the files come in one archive, unpacked into a folder that must not exist yet: the folder goes, not the file
    return (f"{path} is damaged or not a CIFAR file ({why}); delete its folder {path.parent}, "
            f"{REFETCH} (the archive is unpacked into a new folder)")


def _batch(path: Path, label_key: bytes, classes: int) -> tuple[np.ndarray, np.ndarray]:
    content = _text_keys(read_pickle(path))
    data, labels = content.get(b"data"), content.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise TicketlabError(_corrupt(path, "no uint8 'data' array of shape (N, 3072)"))
    whole = (isinstance(labels, list) and all(type(v) is int for v in labels)) or (
        isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu")
    if not whole or len(labels) != len(data):
        raise TicketlabError(_corrupt(path, f"no {label_key.decode()!r} list of whole numbers, one label per image"))
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except OverflowError:
        raise TicketlabError(_corrupt(path, "a label too large to be a class index")) from None
    if len(labels) and not 0 <= labels.min() <= labels.max() < classes:
        raise TicketlabError(_corrupt(path, f"labels from {labels.min()} to {labels.max()}, not class indices "
                                            f"0..{classes - 1}"))
    return data.reshape(-1, 3, 32, 32), labels


def _names(path: Path, key: bytes) -> tuple[str, ...]:
    names = _text_keys(read_pickle(path)).get(key)
    if not isinstance(names, list) or not names:
        raise TicketlabError(_corrupt(path, f"no {key.decode()!r} list"))
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError:
        raise TicketlabError(_corrupt(path, "a class name that is not text")) from None


def _parse(
    folder: Path, name: str, train_files: tuple[str, ...], test_file: str, meta: str, label_key: bytes, names_key: bytes
) -> ImageDataset:
    classes = _names(folder / meta, names_key)
    train = [_batch(folder / f, label_key, len(classes)) for f in train_files]
    test_x, test_y = _batch(folder / test_file, label_key, len(classes))
    return ImageDataset.create(
        name=name,
        train_x=np.concatenate([x for x, _ in train]),
        train_y=np.concatenate([y for _, y in train]),
        test_x=test_x,
        test_y=test_y,
        classes=classes,
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
