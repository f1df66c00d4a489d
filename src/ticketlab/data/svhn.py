"""SVHN cropped digits (format 2) from the official MATLAB files.

Each file holds ``X`` as (32, 32, 3, N) uint8 and ``y`` as (N, 1) with 1..10, where 10
stands for the digit 0. Reading .mat needs SciPy, an optional extra: ``ticketlab[svhn]``.
The 531,131 "extra" images are not used.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ticketlab.data.catalog import DatasetSpec, Resource, register_dataset
from ticketlab.data.dataset import ImageDataset
from ticketlab.data.locate import REFETCH
from ticketlab.errors import TicketlabError

DIGITS = tuple(str(d) for d in range(10))
_URL = "http://ufldl.stanford.edu/housenumbers/"


def _read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.io import loadmat
    except ImportError as exc:
        raise TicketlabError(
            f"reading SVHN ({path.name}) needs SciPy; install it with: pip install 'ticketlab[svhn]'"
        ) from exc
    try:
        content = loadmat(path, variable_names=["X", "y"])
    except Exception as exc:  # scipy raises assorted errors on damaged files; all mean "bad file"
        raise TicketlabError(_corrupt(path, f"{type(exc).__name__}: {exc}")) from exc
    x, y = content.get("X"), content.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.dtype != np.uint8:
        raise TicketlabError(_corrupt(path, "no uint8 X of shape (32, 32, 3, N) and y"))
    y = y.reshape(-1) if isinstance(y, np.ndarray) and y.dtype.kind in "iuf" else np.empty(0)  # not cells, text
    if y.size == 0 or y.size != x.shape[3] or not np.array_equal(y, np.rint(y)) or y.min() < 1 or y.max() > 10:
        raise TicketlabError(_corrupt(path, "y must hold one label 1..10 per image"))
    return x.transpose(3, 2, 0, 1), (y.astype(np.int64) % 10)


def _corrupt(path: Path, why: str) -> str:
    return f"{path} is damaged or not an SVHN file ({why}); delete it, {REFETCH}"


def parse_svhn(folder: Path) -> ImageDataset:
    train_x, train_y = _read_mat(folder / "train_32x32.mat")
    test_x, test_y = _read_mat(folder / "test_32x32.mat")
    return ImageDataset.create("svhn", train_x, train_y, test_x, test_y, DIGITS)


SVHN = DatasetSpec(
    name="svhn",
    folder_candidates=("svhn",),
    required_files=("train_32x32.mat", "test_32x32.mat"),
    resources=(
        Resource(f"{_URL}train_32x32.mat", "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373", extract=False),
        Resource(f"{_URL}test_32x32.mat", "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3", extract=False),
    ),
    parse=parse_svhn,
)

register_dataset(SVHN.name)(SVHN)
