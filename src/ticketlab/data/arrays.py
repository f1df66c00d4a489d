"""A user's own images, as a NumPy ``.npz`` file.

Keys: ``x`` and ``y`` (training images and labels), optionally ``x_test`` and ``y_test``,
optionally ``classes`` (an array of str). The file is read with ``allow_pickle=False``,
so it cannot run code. The dataset is named after the file's stem.

Image layouts accepted for ``x``/``x_test``:

- (N, H, W): greyscale;
- (N, C, H, W): channels first, when C is 1 or 3 and the last axis is not 1, 3 or 4;
- (N, H, W, C): channels last, C in 1, 3, 4.

dtype uint8 (0..255), or float in [0, 1] (converted with ``round(x * 255)``).
Labels are integers 0..K-1, where K is ``len(classes)`` when given, else ``max(y) + 1``.
Without a test split, a stratified 10% of the training examples is held out as the
test split (fixed seed 0, see :func:`ticketlab.data.split.stratified_indices`), so the
same file always gives the same split.
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import numpy as np
import torch

from ticketlab.data.dataset import ImageDataset
from ticketlab.data.split import stratified_indices
from ticketlab.errors import TicketlabError

_LAYOUTS = (
    "accepted image layouts are (N, H, W) grey, (N, C, H, W) with C in 1 or 3, or (N, H, W, C) with C in 1, 3 "
    "or 4, as uint8 0..255 or float 0..1"
)
TEST_FRACTION = 0.1
TEST_SEED = 0


def read_npz(path: Path, how: str) -> dict[str, np.ndarray]:
    """Every array of a .npz, read without unpickling; `how` says how to write a good file."""
    # numpy reads a file that is no zip as a pickle (and its refusal suggests unpickling): never get there
    if not zipfile.is_zipfile(path):
        raise TicketlabError(f"{path} is not a .npz archive (a zip of .npy arrays); {how}")
    try:
        _check_sizes(path)
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except ValueError as exc:
        pickled = "allow_pickle" in str(exc)
        why = "holds object arrays, which ticketlab never unpickles" if pickled else f"is damaged ({exc})"
        raise TicketlabError(f"{path} {why}; {how}") from None
    except Exception as exc:  # a damaged archive fails in many ways (zlib, a garbled header): all mean "bad file"
        raise TicketlabError(f"cannot read {path} as a .npz of plain arrays ({type(exc).__name__}: {exc}); "
                             f"{how}") from None
    odd = sorted(key for key, value in arrays.items() if not isinstance(value, np.ndarray))
    if odd:  # numpy hands back a member that is no .npy file as raw bytes
        raise TicketlabError(f"{path}: {', '.join(odd)} is not a .npy array; {how}")
    return arrays


def _check_sizes(path: Path) -> None:
    """Each .npy member's header against the bytes it holds, before numpy allocates what the header promises
    (a few hundred bytes can promise petabytes)."""
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            with archive.open(info) as member:
                if member.read(6) != b"\x93NUMPY":  # no .npy array: np.load hands it back as bytes, refused below
                    continue
                major = member.read(2)[0]  # the version: major, minor
                read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(member)
                if dtype.hasobject:  # pickled: np.load refuses it, with its own message
                    continue
                needed = math.prod(shape) * dtype.itemsize
                if needed > info.file_size:
                    raise ValueError(f"{info.filename} promises {needed} bytes of data but holds {info.file_size}")


def load_npz(path: Path, name: str | None = None) -> ImageDataset:
    """Read a ``.npz`` of arrays into an ImageDataset (named ``name`` or the file's stem)."""
    name = name or path.stem
    arrays = read_npz(path, "save it with numpy.savez (keys x, y, optional x_test, y_test, classes) and no "
                            "object arrays")

    missing = [key for key in ("x", "y") if key not in arrays]
    if missing:
        raise TicketlabError(
            f"{path} lacks the key(s) {', '.join(missing)} (it has {', '.join(sorted(arrays)) or 'none'}); "
            "save training images as x and labels as y"
        )
    if ("x_test" in arrays) != ("y_test" in arrays):
        raise TicketlabError(f"{path} has only one of x_test and y_test; save both, or neither to hold out 10%")

    classes = _classes(arrays.get("classes"), path)
    x = _images(arrays["x"], path, "x")
    y = _labels(arrays["y"], len(x), path, "y")
    if "x_test" in arrays:
        test_x = _images(arrays["x_test"], path, "x_test")
        test_y = _labels(arrays["y_test"], len(test_x), path, "y_test")
    elif len(x) < 2:
        raise TicketlabError(f"{path} has a single example and no x_test/y_test; add more examples or a test split")
    else:
        n_test = max(1, round(TEST_FRACTION * len(x)))
        keep, held = stratified_indices(torch.from_numpy(y), n_test, TEST_SEED)
        x, y, test_x, test_y = x[keep.numpy()], y[keep.numpy()], x[held.numpy()], y[held.numpy()]

    unseen = sorted(set(np.unique(test_y).tolist()) - set(np.unique(y).tolist()))
    if unseen and "x_test" not in arrays:
        raise TicketlabError(
            f"{path}: the automatic {TEST_FRACTION:.0%} test split took every example of class(es) "
            f"{unseen[:5]}{' …' if len(unseen) > 5 else ''}; add examples of them, or save x_test and y_test"
        )
    if unseen:
        raise TicketlabError(
            f"{path}: test labels {unseen[:5]}{' …' if len(unseen) > 5 else ''} never occur in the training labels y, "
            "so no model can learn them; check that y and y_test use the same label numbering"
        )
    num_classes = len(classes) if classes else int(max(y.max(), test_y.max())) + 1
    distinct = len(np.union1d(y, test_y))
    if not classes and num_classes > max(1000, 10 * distinct):
        raise TicketlabError(
            f"{path}: labels run up to {num_classes - 1} but only {distinct} different ones occur; number the "
            "classes 0..K-1, or save their names as classes"
        )
    for key, labels in (("y", y), ("y_test", test_y)):
        if int(labels.max()) >= num_classes:
            raise TicketlabError(
                f"{path}: {key} has label {int(labels.max())} but classes names only {num_classes}; "
                "labels must be 0..len(classes)-1"
            )
    return ImageDataset.create(
        name=name,
        train_x=x,
        train_y=y,
        test_x=test_x,
        test_y=test_y,
        classes=classes or tuple(str(i) for i in range(num_classes)),
    )


def _images(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Return (N, C, H, W) uint8 for any accepted layout."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[-1] not in (1, 3, 4):
        pass
    elif x.ndim == 4 and x.shape[-1] in (1, 3, 4):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise TicketlabError(f"{path}: {key} has shape {x.shape}; {_LAYOUTS}")
    if len(x) == 0:
        raise TicketlabError(f"{path}: {key} holds no images; save at least one")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise TicketlabError(
                f"{path}: {key} is {x.dtype} with values outside [0, 1]; scale it to [0, 1] or save it as uint8"
            )
        return np.ascontiguousarray(np.rint(x * 255).astype(np.uint8))
    raise TicketlabError(f"{path}: {key} has dtype {x.dtype}; {_LAYOUTS}")


def _labels(y: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer)):
        raise TicketlabError(
            f"{path}: {key} must be a 1-D array of integer class ids 0..K-1, got {y.dtype} of shape {y.shape}"
        )
    if len(y) != n:
        raise TicketlabError(f"{path}: {key} has {len(y)} labels for {n} images; give one label per image")
    if y.dtype.kind == "u" and int(y.max()) > np.iinfo(np.int64).max:
        raise TicketlabError(f"{path}: {key} has label {int(y.max())}, too large for a class id; labels must be 0..K-1")
    if y.min() < 0:
        raise TicketlabError(f"{path}: {key} has negative label {int(y.min())}; labels must be 0..K-1")
    return y.astype(np.int64)


def _classes(classes: np.ndarray | None, path: Path) -> tuple[str, ...]:
    if classes is None:
        return ()
    if classes.ndim != 1 or classes.dtype.kind != "U" or len(classes) == 0:
        raise TicketlabError(
            f"{path}: classes must be a non-empty 1-D array of str (e.g. numpy.array(['cat', 'dog'])), "
            f"got {classes.dtype} of shape {classes.shape}"
        )
    return tuple(str(c) for c in classes)
