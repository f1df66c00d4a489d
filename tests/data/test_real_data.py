"""The loaders on the real, official CIFAR-10 and MNIST files (skipped when absent)."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import need

from ticketlab.data import load_dataset
from ticketlab.data.cifar import read_pickle
from ticketlab.errors import TicketlabError

CIFAR_FILES = [
    f"cifar-10-batches-py/{f}" for f in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
]
MNIST_FILES = [
    f"mnist/{f}.gz"
    for f in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
]


@pytest.fixture(scope="module")
def cifar10(shared_data):
    need(shared_data, *CIFAR_FILES)
    return load_dataset("cifar10", data_dir=shared_data, download=False)


@pytest.fixture(scope="module")
def mnist(shared_data):
    need(shared_data, *MNIST_FILES)
    return load_dataset("mnist", data_dir=shared_data, download=False)


def test_cifar10_real(cifar10):
    assert cifar10.train_x.shape == (50_000, 3, 32, 32) and cifar10.test_x.shape == (10_000, 3, 32, 32)
    assert cifar10.train_x.dtype == torch.uint8 and cifar10.train_x.is_contiguous()
    assert cifar10.train_y.dtype == torch.int64
    assert cifar10.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert cifar10.test_y[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert cifar10.classes[0] == "airplane" and cifar10.num_classes == 10
    assert cifar10.image_shape == (3, 32, 32) and cifar10.image_size == 32 and cifar10.in_channels == 3
    assert cifar10.mean == pytest.approx((0.4914, 0.4822, 0.4465), abs=1e-3)
    assert cifar10.std == pytest.approx((0.2470, 0.2435, 0.2616), abs=1e-3)
    assert torch.bincount(cifar10.train_y).tolist() == [5000] * 10


def test_mnist_real(mnist):
    assert mnist.train_x.shape == (60_000, 1, 28, 28) and mnist.test_x.shape == (10_000, 1, 28, 28)
    assert mnist.train_x.dtype == torch.uint8
    assert mnist.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist.classes == tuple("0123456789")
    assert mnist.mean == pytest.approx((0.1307,), abs=1e-3) and mnist.std == pytest.approx((0.3081,), abs=1e-3)


def test_truncated_real_cifar_batch_names_the_file(shared_data, tmp_path):
    need(shared_data, "cifar-10-batches-py/data_batch_3")
    with open(shared_data / "cifar-10-batches-py" / "data_batch_3", "rb") as f:
        head = f.read(1_000_000)
    path = tmp_path / "data_batch_3"
    path.write_bytes(head)
    with pytest.raises(TicketlabError, match="data_batch_3 is damaged.*delete it"):
        read_pickle(path)
