"""ImageDataset invariants, the validation hold-out, the bundled subset and user-registered loaders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import ticketlab.data as data
from ticketlab.data import ImageDataset, catalog, load_dataset, register_dataset, train_validation_split
from ticketlab.data.bundled import MNIST_SUBSET
from ticketlab.errors import TicketlabError
from ticketlab.registry import Registry


def make(labels, test_n=4, name="toy"):
    n = len(labels)
    rng = np.random.default_rng(0)
    return ImageDataset.create(
        name,
        rng.integers(0, 256, (n, 2, 4, 4), dtype=np.uint8),
        np.asarray(labels),
        rng.integers(0, 256, (test_n, 2, 4, 4), dtype=np.uint8),
        np.arange(test_n) % 3,
        ("a", "b", "c"),
    )


def test_public_api():
    assert set(data.__all__) >= {
        "ImageDataset", "load_dataset", "register_dataset", "DATASETS", "list_datasets",
        "train_validation_split", "search_roots",
    }  # fmt: skip
    assert set(data.list_datasets()) >= {"cifar10", "cifar100", "mnist", "fashion_mnist", "svhn", "mnist_subset"}


def test_unknown_dataset_lists_choices():
    with pytest.raises(TicketlabError, match="unknown dataset 'imagenet'; choose one of: .*cifar10.*mnist_subset"):
        load_dataset("imagenet")


def test_stats_are_exact():
    x = torch.tensor([0, 255, 0, 255], dtype=torch.uint8).reshape(4, 1, 1, 1)
    dataset = ImageDataset.create("t", x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1]), ("a", "b"))
    assert dataset.mean == (0.5,) and dataset.std == (0.5,)
    assert dataset.train_y.dtype == torch.int64 and dataset.in_channels == 1


def test_validate_rejects_inconsistent_data():
    good = make([0, 1, 2, 0])
    with pytest.raises(TicketlabError, match="labels range over 0..5 but there are 3 classes"):
        dataclasses.replace(good, train_y=torch.tensor([0, 1, 5, 0])).validate()
    with pytest.raises(TicketlabError, match="4 images but 3 labels"):
        dataclasses.replace(good, train_y=torch.tensor([0, 1, 2])).validate()
    with pytest.raises(TicketlabError, match="uint8 tensor of shape \\(N, C, H, W\\)"):
        dataclasses.replace(good, test_x=good.test_x.float()).validate()
    with pytest.raises(TicketlabError, match="train_y must be an int64 tensor"):
        make([0.5, 1.0, 2.0, 0.0])
    flat = torch.full((4, 1, 2, 2), 7, dtype=torch.uint8)
    with pytest.raises(TicketlabError, match="every training pixel of channel 0 has the same value"):
        ImageDataset.create("t", flat, torch.tensor([0, 1, 0, 1]), flat, torch.tensor([0, 1, 0, 1]), ("a", "b"))


def test_split_is_stratified_reproducible_and_disjoint():
    labels = [0] * 60 + [1] * 30 + [2] * 10
    dataset = make(labels)
    reduced, (val_x, val_y) = train_validation_split(dataset, 10, seed=3)
    assert torch.bincount(val_y).tolist() == [6, 3, 1]
    assert len(reduced.train_y) == 90 and val_x.shape == (10, 2, 4, 4)
    assert reduced.test_x is dataset.test_x  # the test split is never touched

    again, (val_x2, _) = train_validation_split(dataset, 10, seed=3)
    assert torch.equal(val_x, val_x2) and torch.equal(reduced.train_x, again.train_x)
    other, (val_x3, _) = train_validation_split(dataset, 10, seed=4)
    assert not torch.equal(val_x, val_x3)

    # Disjoint and complete: every original example is in exactly one part (rows are unique here).
    rows = [bytes(r) for r in dataset.train_x.numpy()]
    assert len(set(rows)) == len(rows)
    kept = {bytes(r) for r in reduced.train_x.numpy()}
    held = {bytes(r) for r in val_x.numpy()}
    assert not kept & held and kept | held == set(rows)
    # Statistics describe the reduced training set only.
    assert reduced.mean == ImageDataset.create("x", reduced.train_x, reduced.train_y, dataset.test_x, dataset.test_y,
                                               dataset.classes).mean  # fmt: skip


def test_split_rounds_to_the_requested_size():
    _, (_, val_y) = train_validation_split(make([0] * 7 + [1] * 7 + [2] * 7), 5, seed=0)
    assert len(val_y) == 5 and sorted(torch.bincount(val_y, minlength=3).tolist()) == [1, 2, 2]


@pytest.mark.parametrize("n", [0, -1, 100, 101])
def test_split_size_must_leave_both_parts_non_empty(n):
    with pytest.raises(TicketlabError, match="choose a number between 1 and 99"):
        train_validation_split(make([0, 1, 2, 0] * 25), n, seed=0)


def test_bundled_mnist_subset():
    assert MNIST_SUBSET.stat().st_size < 2.5e6
    dataset = load_dataset("mnist_subset")
    assert dataset.name == "mnist_subset" and dataset.image_shape == (1, 28, 28)
    assert dataset.train_x.shape[0] == 10_000 and dataset.test_x.shape[0] == 2_000
    assert torch.bincount(dataset.train_y).tolist() == [1000] * 10
    assert torch.bincount(dataset.test_y).tolist() == [200] * 10
    # The official order is kept: MNIST's first training labels are 5 0 4 1 9 2 1 3 1 4.
    assert dataset.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert dataset.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_bundled_subset_matches_real_mnist(shared_data):
    from tests.conftest import need

    need(shared_data, "mnist/train-images-idx3-ubyte.gz", "mnist/t10k-images-idx3-ubyte.gz")
    full = load_dataset("mnist", data_dir=shared_data, download=False)
    subset = load_dataset("mnist_subset")
    keep = torch.cat([torch.nonzero(full.train_y == c).flatten()[:1000] for c in range(10)]).sort().values
    assert torch.equal(subset.train_x, full.train_x[keep]) and torch.equal(subset.train_y, full.train_y[keep])
    keep = torch.cat([torch.nonzero(full.test_y == c).flatten()[:200] for c in range(10)]).sort().values
    assert torch.equal(subset.test_x, full.test_x[keep])


@pytest.fixture
def fresh_registry(monkeypatch):
    monkeypatch.setattr(catalog, "DATASETS", Registry("dataset"))


def test_user_loader_function(fresh_registry, tmp_path):
    seen = {}

    @register_dataset("toy")
    def load_toy(data_dir, download):
        seen.update(data_dir=data_dir, download=download)
        return make([0, 1, 2, 0])

    dataset = load_dataset("toy", data_dir=str(tmp_path), download=False)
    assert dataset.name == "toy" and seen == {"data_dir": tmp_path, "download": False}
    assert catalog.list_datasets() == ["toy"]


def test_user_loader_must_return_a_dataset(fresh_registry):
    register_dataset("broken")(lambda data_dir, download: {"x": 1})
    with pytest.raises(TicketlabError, match="returned dict; it must return an ImageDataset"):
        load_dataset("broken")
