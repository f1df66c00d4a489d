"""Parsing the official formats, and refusing damaged or hostile files by name."""

from __future__ import annotations

import gzip
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from tests.data.conftest import cifar_batch, idx_bytes, write_cifar10, write_mnist

from ticketlab.data import load_dataset
from ticketlab.data.cifar import parse_cifar10, parse_cifar100
from ticketlab.data.mnist import FASHION_CLASSES, read_idx
from ticketlab.data.svhn import parse_svhn
from ticketlab.errors import TicketlabError

# ---------------------------------------------------------------- IDX


def test_fashion_mnist_from_torchvision_style_folder(tmp_path):
    arrays = write_mnist(tmp_path / "FashionMNIST" / "raw", n_train=30, n_test=10)
    dataset = load_dataset("fashion_mnist", data_dir=tmp_path, download=False)
    assert dataset.name == "fashion_mnist" and dataset.classes == FASHION_CLASSES
    assert dataset.train_x.shape == (30, 1, 28, 28) and dataset.test_x.shape == (10, 1, 28, 28)
    assert dataset.train_x[:, 0].numpy().tolist() == arrays["train-images-idx3-ubyte"].tolist()
    assert dataset.train_y.tolist() == arrays["train-labels-idx1-ubyte"].tolist()


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda data: (2049).to_bytes(4, "big") + data[4:], "magic number 2049, expected 2051"),
        (lambda data: data[:-5], "bytes where the header"),
        (lambda data: data[:10], "header is cut short"),
        (lambda data: data + b"\0", "bytes where the header"),
    ],
)
def test_damaged_idx_names_the_file(tmp_path, damage, why):
    write_mnist(tmp_path / "mnist")
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(TicketlabError) as info:
        load_dataset("mnist", data_dir=tmp_path, download=False)
    assert str(path) in str(info.value) and why in str(info.value) and "delete it" in str(info.value)
    # downloads are off in this load: the fix says how to fetch a copy, not that one will come by itself
    assert "without --no-download" in str(info.value) and "downloaded again" not in str(info.value)


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(1000) % 10, 2049))[:40])
    with pytest.raises(TicketlabError, match=r"labels\.gz is damaged"):
        read_idx(path, 2049)


def test_image_label_count_mismatch(tmp_path):
    write_mnist(tmp_path / "mnist", n_test=10)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(9), 2049))
    with pytest.raises(TicketlabError, match="10 images but .*t10k-labels-idx1-ubyte has 9 labels"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------- CIFAR


def test_cifar10_synthetic_layout(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, n=4)
    dataset = parse_cifar10(folder)
    first = cifar_batch(4, 1)
    assert dataset.train_x.shape == (20, 3, 32, 32) and dataset.test_x.shape == (4, 3, 32, 32)
    # Row = R plane, G plane, B plane, each 32x32 row-major.
    row = first[b"data"][0]
    assert dataset.train_x[0, 1, 2, 3].item() == row[1024 + 2 * 32 + 3]
    assert dataset.train_y[:4].tolist() == first[b"labels"]
    assert dataset.classes == tuple(f"class{i}" for i in range(10))


def test_cifar100(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, n in (("train", 6), ("test", 3)):
        batch = cifar_batch(n, n, label_key=b"fine_labels")
        batch[b"coarse_labels"] = [0] * n
        batch[b"fine_labels"] = [99 - i for i in range(n)]
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"fine_label_names": [f"f{i}".encode() for i in range(100)], b"coarse_label_names": [b"c"] * 20}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    dataset = load_dataset("cifar100", data_dir=tmp_path, download=False)
    assert dataset.num_classes == 100 and dataset.train_y.tolist() == [99, 98, 97, 96, 95, 94]
    assert parse_cifar100(folder).test_x.shape == (3, 3, 32, 32)


def test_truncated_cifar_pickle_names_the_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(TicketlabError, match="test_batch is damaged.*delete it"):
        parse_cifar10(folder)


def test_cifar_batch_with_wrong_content(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_2").write_bytes(pickle.dumps({b"data": np.zeros((2, 10), np.uint8)}, protocol=2))
    with pytest.raises(TicketlabError, match="data_batch_2.*shape \\(N, 3072\\)"):
        parse_cifar10(folder)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_that_runs_code_is_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    marker = tmp_path / "pwned"
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": _Exploit(marker)}, protocol=2))
    with pytest.raises(TicketlabError, match=r"batches\.meta.*refusing to load .*system"):
        parse_cifar10(folder)
    assert not marker.exists()


# ---------------------------------------------------------------- SVHN


def _write_svhn(folder, n_train=7, n_test=3):
    from scipy.io import savemat

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    made = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).reshape(n, 1).astype(np.uint8)  # 1..10, 10 meaning 0
        savemat(folder / f"{split}_32x32.mat", {"X": x, "y": y})
        made[split] = (x, y)
    return made


def test_svhn_synthetic_mat(tmp_path):
    pytest.importorskip("scipy")
    made = _write_svhn(tmp_path / "svhn")
    dataset = load_dataset("svhn", data_dir=tmp_path, download=False)
    x, y = made["train"]
    assert dataset.train_x.shape == (7, 3, 32, 32) and dataset.test_x.shape == (3, 3, 32, 32)
    assert dataset.train_x[4, 2, 5, 9].item() == x[5, 9, 2, 4]  # X is (H, W, C, N)
    assert dataset.train_y.tolist() == [1, 2, 3, 4, 5, 6, 7]
    assert dataset.test_y.tolist() == [1, 2, 3]
    assert (y.reshape(-1) % 10).tolist() == dataset.train_y.tolist()


def test_svhn_label_ten_is_digit_zero(tmp_path):
    pytest.importorskip("scipy")
    _write_svhn(tmp_path / "svhn", n_train=10, n_test=10)
    dataset = parse_svhn(tmp_path / "svhn")
    assert dataset.train_y[9].item() == 0 and torch.bincount(dataset.train_y).tolist() == [1] * 10


def test_svhn_without_scipy_says_what_to_install(tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    _write_svhn(tmp_path / "svhn")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    with pytest.raises(TicketlabError, match=r"pip install 'ticketlab\[svhn\]'"):
        parse_svhn(tmp_path / "svhn")


def test_damaged_svhn_names_the_file(tmp_path):
    pytest.importorskip("scipy")
    _write_svhn(tmp_path / "svhn")
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file, garbage")
    with pytest.raises(TicketlabError, match="test_32x32.mat is damaged"):
        parse_svhn(tmp_path / "svhn")


def _hollow_array_pickle(shape) -> bytes:
    reconstruct = np.empty(0).__reduce__()[0]  # numpy's _reconstruct, as real CIFAR pickles name it

    class Hollow:
        def __reduce__(self):
            return reconstruct, (np.ndarray, shape, b"B")

    return pickle.dumps({b"data": Hollow(), b"labels": [0] * shape[0]}, protocol=2)


def _direct_array_pickle(shape) -> bytes:
    """numpy.ndarray called directly, as np.ndarray(shape, 'u1'): uninitialised memory, no _reconstruct."""
    class Direct:
        def __reduce__(self):
            return np.ndarray, (shape, "u1")

    return pickle.dumps({b"data": Direct(), b"labels": [0] * shape[0]}, protocol=2)


@pytest.mark.parametrize("make", [_hollow_array_pickle, _direct_array_pickle])
def test_an_array_the_file_never_fills_is_refused(tmp_path, make):
    """A 200-byte file must not become 30 MB of uninitialised 'images' (or ask for gigabytes)."""
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").write_bytes(make((10000, 3072)))
    with pytest.raises(TicketlabError, match=r"data_batch_3 is damaged.*not filled from the file"):
        parse_cifar10(folder)


def _array_state_pickle(state) -> bytes:
    """An array pickled as numpy does (_reconstruct of an empty array, then BUILD), with a state of our own."""
    reconstruct = np.empty(0).__reduce__()[0]

    class Crafted:
        def __reduce__(self):
            return reconstruct, (np.ndarray, (0,), b"b"), state

    return pickle.dumps({b"data": Crafted(), b"labels": [0, 1]}, protocol=2)


@pytest.mark.parametrize("state, why", [
    ((1, (2,), np.dtype("O"), False, [1]), "dtype 'O8'"),  # numpy would read past the list: a segfault
    ((1, (2, 3072), np.dtype("u1"), False, bytes(100)), "filled from 100 bytes"),
    ((1, (2, 3072), np.dtype([("a", "u1")]), False, bytes(6144)), "refusing dtype"),
    ((1, (2, 3072), "u1", False, bytes(6144)), "not \\(shape, dtype, order, bytes\\)"),
])
def test_an_array_state_numpy_would_misread_is_refused_before_numpy_sees_it(tmp_path, state, why):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_2").write_bytes(_array_state_pickle(state))
    with pytest.raises(TicketlabError, match=f"data_batch_2 is damaged.*{why}.*delete its folder"):
        parse_cifar10(folder)


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_arrays_re_pickled_by_python_3_in_any_byte_order_or_layout_load(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    batch = cifar_batch(4, 1)
    data = np.asfortranarray(batch[b"data"])
    labels = np.array(batch[b"labels"], dtype=">i8")
    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=protocol))
    dataset = parse_cifar10(folder)
    assert np.array_equal(dataset.train_x[:4].numpy().reshape(4, -1), batch[b"data"])
    assert dataset.train_y[:4].tolist() == list(batch[b"labels"])


def test_cifar_labels_past_the_classes_and_names_that_are_not_text_name_their_file(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    (folder / "data_batch_3").write_bytes(pickle.dumps({**cifar_batch(4, 3), b"labels": [0, 1, 200, 2]}, protocol=2))
    with pytest.raises(TicketlabError, match=r"data_batch_3 is damaged.*labels from 0 to 200, not class indices 0..9"):
        parse_cifar10(folder)
    write_cifar10(folder)
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"\xffat"] * 10}, protocol=2))
    with pytest.raises(TicketlabError, match="batches.meta is damaged.*not text"):
        parse_cifar10(folder)


def test_mnist_labels_past_the_classes_name_their_file(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw")
    labels = np.arange(10, dtype=np.uint8)
    labels[3] = 200
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 2049))
    with pytest.raises(TicketlabError, match=r"t10k-labels-idx1-ubyte is damaged.*a label 200"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("labels", [[3.9, 1.0, 2.0, 0.0], 7, [b"1", b"2", b"3", b"4"], [2**70, 0, 0, 0]])
def test_cifar_labels_that_are_no_class_indices_are_refused(tmp_path, labels):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    batch = {**cifar_batch(4, 1), b"labels": labels}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(TicketlabError, match="data_batch_1 is damaged"):
        parse_cifar10(folder)


def test_an_idx_header_promising_more_than_4_gib_is_refused_at_once(tmp_path):
    path = tmp_path / "images.gz"
    header = b"".join(d.to_bytes(4, "big") for d in (2051, 2**31, 2**31, 4))
    path.write_bytes(gzip.compress(header))
    with pytest.raises(TicketlabError, match="promises .* over 4 GiB"):
        read_idx(path, 2051)


def test_a_gzip_that_decompresses_past_its_header_is_refused(tmp_path):
    path = tmp_path / "labels.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.arange(10) % 10, 2049) + bytes(10_000_000)))
    with pytest.raises(TicketlabError, match="19 bytes where the header \\(10,\\) implies 18"):
        read_idx(path, 2049)


@pytest.mark.parametrize("labels", [np.array([["1"], ["2"], ["3"]]), np.array([[1 + 1j], [2 + 0j], [3 + 0j]])])
def test_svhn_labels_that_are_no_numbers_are_refused(tmp_path, labels):
    pytest.importorskip("scipy")
    from scipy.io import savemat

    _write_svhn(tmp_path / "svhn")
    x = np.zeros((32, 32, 3, 3), dtype=np.uint8)
    savemat(tmp_path / "svhn" / "test_32x32.mat", {"X": x, "y": labels})
    with pytest.raises(TicketlabError, match="test_32x32.mat is damaged.*one label 1..10"):
        parse_svhn(tmp_path / "svhn")


def test_cifar_files_re_pickled_with_text_keys_read_alike(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder)
    before = parse_cifar10(folder)
    for name in ("data_batch_2", "batches.meta"):
        content = pickle.loads((folder / name).read_bytes(), encoding="bytes")
        (folder / name).write_bytes(pickle.dumps({k.decode(): v for k, v in content.items()}, protocol=4))
    after = parse_cifar10(folder)
    assert after.train_x.equal(before.train_x) and after.train_y.equal(before.train_y)
    assert after.classes == before.classes
