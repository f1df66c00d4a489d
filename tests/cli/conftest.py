"""What the CLI tests share: small datasets as .npz files, written once per session."""

from pathlib import Path

import numpy as np
import pytest

from helpers import tiny_dataset


def _npz(folder: Path, channels: int) -> Path:
    ds = tiny_dataset(n=160, channels=channels, size=8)
    path = folder / "tiny.npz"
    np.savez(path, x=ds.train_x.numpy(), y=ds.train_y.numpy(), x_test=ds.test_x.numpy(), y_test=ds.test_y.numpy())
    return path


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory) -> Path:
    """160 colour 8x8 training images of 4 classes."""
    return _npz(tmp_path_factory.mktemp("colour"), 3)


@pytest.fixture(scope="session")
def grey_npz(tmp_path_factory) -> Path:
    """The same in one channel, as MNIST-like tickets have."""
    return _npz(tmp_path_factory.mktemp("grey"), 1)
