"""A user's own .npz arrays: the accepted layouts, and clear refusals of the rest."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ticketlab.data import load_dataset
from ticketlab.errors import TicketlabError


def save(tmp_path, name="mine", **arrays):
    path = tmp_path / f"{name}.npz"
    np.savez(path, **arrays)
    return path


def images(n, *shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def labels(n, k=3):
    return np.arange(n) % k


def test_grey_nhw(tmp_path):
    x = images(12, 9, 7)
    dataset = load_dataset(save(tmp_path, x=x, y=labels(12), x_test=x[:3], y_test=labels(3)))
    assert dataset.name == "mine" and dataset.image_shape == (1, 9, 7) and dataset.image_size == 9
    assert dataset.train_x[:, 0].numpy().tolist() == x.tolist()
    assert dataset.classes == ("0", "1", "2")


def test_channels_last(tmp_path):
    x = images(6, 8, 8, 3)
    dataset = load_dataset(save(tmp_path, x=x, y=labels(6), x_test=x[:2], y_test=labels(2)))
    assert dataset.image_shape == (3, 8, 8)
    assert dataset.train_x[2, 1, 4, 5].item() == x[2, 4, 5, 1]


def test_channels_first(tmp_path):
    x = images(6, 3, 8, 8)
    dataset = load_dataset(save(tmp_path, x=x, y=labels(6), x_test=x[:2], y_test=labels(2)))
    assert dataset.image_shape == (3, 8, 8) and torch.equal(dataset.train_x, torch.from_numpy(x))


def test_float_in_unit_range_is_rounded_to_uint8(tmp_path):
    x = np.array([0.0, 1.0, 0.5, 0.2]).reshape(1, 2, 2).repeat(4, axis=0).astype(np.float32)
    dataset = load_dataset(save(tmp_path, x=x, y=labels(4, 2), x_test=x[:2], y_test=labels(2, 2)))
    assert dataset.train_x.dtype == torch.uint8
    assert dataset.train_x[0, 0].flatten().tolist() == [0, 255, 128, 51]


def test_class_names_from_file(tmp_path):
    x = images(4, 5, 5)
    path = save(tmp_path, x=x, y=labels(4, 2), x_test=x, y_test=labels(4, 2), classes=np.array(["cat", "dog", "owl"]))
    assert load_dataset(path).classes == ("cat", "dog", "owl")


def test_missing_test_split_holds_out_stratified_ten_percent(tmp_path):
    x = images(200, 6, 6)
    y = np.repeat(np.arange(4), [100, 50, 30, 20])
    dataset = load_dataset(save(tmp_path, x=x, y=y))
    assert len(dataset.test_y) == 20 and len(dataset.train_y) == 180
    assert torch.bincount(dataset.test_y).tolist() == [10, 5, 3, 2]
    # Fixed seed: the same file gives the same split; train and test are disjoint and cover x.
    again = load_dataset(tmp_path / "mine.npz")
    assert torch.equal(dataset.test_x, again.test_x)
    rows = {bytes(r) for r in dataset.train_x.numpy()} | {bytes(r) for r in dataset.test_x.numpy()}
    assert len(rows) == 200


@pytest.mark.parametrize(
    "arrays, message",
    [
        (dict(x=images(4, 5, 5), y=np.array([0, 1, -1, 0])), "negative label"),
        (dict(x=images(4, 5, 5), y=np.array([0.0, 1.0, 1.0, 0.0])), "integer class ids"),
        (dict(x=images(4, 5, 5), y=labels(3)), "3 labels for 4 images"),
        (dict(x=images(4, 5, 5), y=labels(4), classes=np.array(["a", "b"])), "label 2 but classes names only 2"),
        (dict(x=images(4, 5, 6, 7), y=labels(4)), "accepted image layouts"),
        (dict(x=images(4, 5), y=labels(4)), "accepted image layouts"),
        (dict(x=images(4, 5, 5).astype(np.int32), y=labels(4)), "dtype int32"),
        (dict(x=images(4, 5, 5).astype(np.float32), y=labels(4)), "outside \\[0, 1\\]"),
        (dict(x=images(4, 5, 5), y=labels(4), x_test=images(2, 5, 5)), "only one of x_test and y_test"),
        (dict(images=images(4, 5, 5), y=labels(4)), "lacks the key\\(s\\) x"),
        (dict(x=images(4, 5, 5), y=labels(4), x_test=images(2, 6, 6), y_test=labels(2)), "same \\(C, H, W\\)"),
        (dict(x=images(4, 5, 5), y=labels(4, 2), x_test=images(2, 5, 5), y_test=np.array([20, 21])),
         "test labels \\[20, 21\\] never occur in the training labels"),
        (dict(x=images(3, 5, 5), y=np.arange(3)),
         "automatic 10% test split took every example of class\\(es\\) \\[0\\]"),
        (dict(x=np.full((4, 5, 5), 7, np.uint8), y=labels(4)), "every training pixel of channel 0 has the same value"),
    ],
)
def test_bad_arrays_are_refused(tmp_path, arrays, message):
    with pytest.raises(TicketlabError, match=message):
        load_dataset(save(tmp_path, **arrays))


def test_object_arrays_are_never_unpickled(tmp_path):
    path = save(tmp_path, x=images(4, 5, 5), y=labels(4), classes=np.array(["a", None], dtype=object))
    with pytest.raises(TicketlabError, match="holds object arrays, which ticketlab never unpickles"):
        load_dataset(path)


def test_not_a_zip(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(TicketlabError, match="junk.npz is not a .npz archive") as error:
        load_dataset(tmp_path / "junk.npz")
    assert "allow_pickle" not in str(error.value)  # numpy's own message invites unpickling


def test_a_member_that_is_no_npy_array_is_refused(tmp_path):
    import zipfile

    path = save(tmp_path, x=images(4, 5, 5), y=labels(4))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("junk.npy", b"not an array")
    with pytest.raises(TicketlabError, match="junk is"):
        load_dataset(path)


def test_damaged_compressed_members_are_a_clear_error(tmp_path):
    path = tmp_path / "mine.npz"
    np.savez_compressed(path, x=images(64, 8, 8), y=labels(64))
    data = bytearray(path.read_bytes())
    middle = len(data) // 3
    data[middle:middle + 60] = bytes(60)  # zeroed deflate stream: zlib fails, not numpy
    path.write_bytes(bytes(data))
    with pytest.raises(TicketlabError, match="mine.npz"):
        load_dataset(path)


def test_a_header_promising_more_than_the_member_holds_is_refused_before_allocating(tmp_path):
    import zipfile

    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 3, 32, 32), np.uint8))
    header["shape"] = (10**13, 3, 32, 32)  # 27 PiB in a few hundred bytes
    path = tmp_path / "mine.npz"
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("x.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(bytes(100))
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, labels(4))
    with pytest.raises(TicketlabError, match="x.npy promises .* bytes of data but holds"):
        load_dataset(path)


def test_one_huge_label_does_not_make_a_trillion_classes(tmp_path):
    y = labels(4)
    y[3] = 10**12
    with pytest.raises(TicketlabError, match="labels run up to 1000000000000 but only 4 different ones occur"):
        load_dataset(save(tmp_path, x=images(4, 5, 5), y=y, x_test=images(2, 5, 5), y_test=labels(2)))
