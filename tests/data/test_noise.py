"""Label noise: each convention's realised rate, determinism per seed, label files, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ticketlab.data.noise import (
    CIFAR10_ASYMMETRIC,
    NOISE_KINDS,
    NoiseSpec,
    add_label_noise,
    asymmetric_noise,
    flip_noise,
    labels_from_file,
    noise_rate,
    parse_noise,
    uniform_noise,
)
from ticketlab.errors import TicketlabError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def balanced(per_class: int, k: int = 10) -> torch.Tensor:
    return torch.arange(k).repeat(per_class)


def test_parse_each_kind():
    assert parse_noise("uniform:0.4") == NoiseSpec("uniform", rate=0.4)
    assert parse_noise(" flip:0.2 ") == NoiseSpec("flip", rate=0.2)
    assert parse_noise("asymmetric:1") == NoiseSpec("asymmetric", rate=1.0)
    assert parse_noise("file:/data/c10n.npz:worse_label") == NoiseSpec("file", path="/data/c10n.npz", key="worse_label")
    assert parse_noise(r"file:C:\data\c10n.npz:random_label1") == NoiseSpec(
        "file", path=r"C:\data\c10n.npz", key="random_label1"
    )


def test_uniform_redraws_from_all_classes():
    """The realised error rate is r(K-1)/K, not r: a redrawn label may be the true one."""
    clean = balanced(2000)
    for rate in (0.4, 1.0):
        noisy = uniform_noise(clean, 10, rate, gen())
        assert noise_rate(clean, noisy) == pytest.approx(rate * 9 / 10, abs=0.01)


def test_uniform_redraws_exactly_round_rate_n():
    # with a million classes a redraw practically never repeats the true label, so changes = redraws
    clean = torch.zeros(1000, dtype=torch.int64)
    for seed in range(3):
        changed = int((uniform_noise(clean, 10**6, 0.37, gen(seed)) != clean).sum())
        assert 368 <= changed <= 370


def test_uniform_new_labels_are_uniform_over_classes():
    counts = torch.bincount(uniform_noise(torch.zeros(8000, dtype=torch.int64), 4, 1.0, gen()), minlength=4)
    assert torch.allclose(counts / 8000, torch.full((4,), 0.25), atol=0.02)


def test_flip_changes_exactly_the_count_to_a_different_class():
    clean = balanced(101)
    for rate in (0.2, 0.55, 1.0):
        noisy = flip_noise(clean, 10, rate, gen())
        assert int((noisy != clean).sum()) == round(rate * len(clean))


def test_flip_targets_are_uniform_over_the_other_classes():
    counts = torch.bincount(flip_noise(torch.zeros(8000, dtype=torch.int64), 5, 1.0, gen()), minlength=5)
    assert counts[0] == 0
    assert torch.allclose(counts[1:] / 8000, torch.full((4,), 0.25), atol=0.02)


def test_cifar10_pairs_by_class_name():
    names = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")  # official order
    named = {names[s]: names[t] for s, t in CIFAR10_ASYMMETRIC.items()}
    assert named == {"truck": "automobile", "bird": "airplane", "cat": "dog", "dog": "cat", "deer": "horse"}


def test_asymmetric_moves_only_listed_pairs_at_the_rate():
    clean = balanced(2000)
    noisy = asymmetric_noise(clean, 0.4, gen())
    changed = noisy != clean
    for source in range(10):
        moved = changed[clean == source]
        if source in CIFAR10_ASYMMETRIC:
            assert (noisy[clean == source][moved] == CIFAR10_ASYMMETRIC[source]).all()
            assert moved.float().mean().item() == pytest.approx(0.4, abs=0.045)  # 4 sigma at n=2000
        else:
            assert not moved.any(), f"class {source} is no source but changed"


def test_asymmetric_swaps_cat_and_dog_both_ways():
    clean = torch.tensor([3, 5] * 50)
    noisy = asymmetric_noise(clean, 1.0, gen())
    assert noisy.tolist() == [5, 3] * 50


def test_asymmetric_own_pairs_on_any_class_count():
    clean = torch.tensor([0, 11, 12, 11])
    assert asymmetric_noise(clean, 1.0, gen(), pairs={11: 12}).tolist() == [0, 12, 12, 12]


@pytest.mark.parametrize("spec", [NoiseSpec("uniform", 0.3), NoiseSpec("flip", 0.3), NoiseSpec("asymmetric", 0.3)])
def test_seeded_deterministic_and_input_untouched(spec):
    clean = balanced(50).to(torch.int32)
    before = clean.clone()
    a = add_label_noise(clean, 10, spec, seed=1)
    assert a.dtype == torch.int64 and torch.equal(clean, before)
    assert torch.equal(a, add_label_noise(clean, 10, spec, seed=1))
    assert not torch.equal(a, add_label_noise(clean, 10, spec, seed=2))


def test_zero_rate_is_a_copy():
    clean = balanced(5)
    for kind in ("uniform", "flip", "asymmetric"):
        noisy = add_label_noise(clean, 10, NoiseSpec(kind, 0.0), seed=0)
        assert torch.equal(noisy, clean) and noisy.data_ptr() != clean.data_ptr()


def test_file_round_trip(tmp_path):
    worse = np.array([1, 0, 3, 3, 2, 9], dtype=np.int16)
    path = tmp_path / "c10n.npz"
    np.savez(path, worse_label=worse, aggregate_label=np.zeros(6, dtype=np.int64))
    noisy = add_label_noise(torch.zeros(6, dtype=torch.int64), 10, parse_noise(f"file:{path}:worse_label"), seed=5)
    assert noisy.dtype == torch.int64 and noisy.tolist() == worse.tolist()


def test_noise_rate_counts_differences():
    assert noise_rate(torch.tensor([0, 1, 2, 3]), torch.tensor([0, 2, 2, 0])) == 0.5
    assert noise_rate(torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64)) == 0.0


def raises(match: str):
    return pytest.raises(TicketlabError, match=match)


def test_unknown_kind_lists_kinds_and_syntax():
    with raises("unknown label noise kind 'symmetric'.*" + ", ".join(NOISE_KINDS) + ".*file:PATH.npz:KEY"):
        parse_noise("symmetric:0.4")
    with raises("unknown label noise kind 'gaussian'"):
        NoiseSpec("gaussian", 0.1)


@pytest.mark.parametrize("text", ["uniform:1.5", "flip:-0.1", "asymmetric:nan"])
def test_rate_outside_unit_interval(text):
    with raises(r"must be a fraction in \[0, 1\]"):
        parse_noise(text)


def test_rate_out_of_range_in_generators():
    with raises(r"fraction in \[0, 1\]"):
        flip_noise(balanced(2), 10, 1.01, gen())
    with raises(r"fraction in \[0, 1\]"):
        asymmetric_noise(balanced(2), -0.5, gen())


@pytest.mark.parametrize(
    ("text", "match"),
    [("uniform", "lacks its rate"), ("flip:", "lacks its rate"), ("uniform:40%", "not a number"),
     ("file:/data/c10n.npz", "needs both a path and a key"), ("file:", "lacks its path and key")],
)
def test_bad_syntax(text, match):
    with raises(match + ".*uniform:RATE"):
        parse_noise(text)


def test_labels_out_of_range():
    with raises(r"labels must be 0..3"):
        uniform_noise(torch.tensor([0, 4]), 4, 0.5, gen())


def test_asymmetric_needs_cifar10_class_count():
    with raises("defined for CIFAR-10.*this dataset has 100"):
        add_label_noise(torch.arange(100), 100, NoiseSpec("asymmetric", 0.2), seed=0)
    with raises("defined for CIFAR-10.*pass your own"):
        asymmetric_noise(torch.tensor([0, 10]), 0.2, gen())


def test_file_missing(tmp_path):
    with raises("no label file at"):
        labels_from_file(tmp_path / "absent.npz", "worse_label", 3, 10)


def test_file_not_npz(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("1,2,3\n")
    with raises("is not a .npz"):
        labels_from_file(path, "worse_label", 3, 10)


def test_torch_pickle_is_refused_unread(tmp_path, monkeypatch):
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save({"worse_label": np.arange(3)}, path)

    def never(*args, **kwargs):
        raise AssertionError("the .pt file was unpickled")

    monkeypatch.setattr(torch, "load", never)
    with raises(r"never unpickles.*torch.load\(.*CIFAR-10_human.pt.*numpy.savez\(.*CIFAR-10_human.npz"):
        labels_from_file(path, "worse_label", 3, 10)


def test_object_array_is_refused(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, worse_label=np.array([1, "a"], dtype=object))
    with raises("holds object arrays, which ticketlab never unpickles"):
        labels_from_file(path, "worse_label", 2, 10)


def test_file_key_missing_lists_keys(tmp_path):
    path = tmp_path / "c10n.npz"
    np.savez(path, aggregate_label=np.zeros(3, dtype=np.int64), random_label1=np.zeros(3, dtype=np.int64))
    with raises("no label array 'worst_label'; it has aggregate_label, random_label1"):
        labels_from_file(path, "worst_label", 3, 10)


def test_file_wrong_length_names_count_and_order(tmp_path):
    path = tmp_path / "c10n.npz"
    np.savez(path, worse_label=np.zeros(4, dtype=np.int64))
    with raises("has 4 labels but the training set has 5.*training set's order"):
        labels_from_file(path, "worse_label", 5, 10)


@pytest.mark.parametrize(
    "bad", [np.array([0, 10]), np.array([-1, 2]), np.array([0.0, 1.0]), np.zeros((2, 1), dtype=np.int64)]
)
def test_file_labels_out_of_range_or_wrong_type(tmp_path, bad):
    path = tmp_path / "c10n.npz"
    np.savez(path, worse_label=bad)
    with raises("labels must be 0..9|1-D array of integer labels"):
        labels_from_file(path, "worse_label", 2, 10)


def test_asymmetric_refuses_ten_classes_that_are_not_cifar10():
    digits = tuple(str(d) for d in range(10))
    with raises("look-alike CIFAR-10 classes.*0, 1, 2"):
        add_label_noise(balanced(5), 10, NoiseSpec("asymmetric", 0.4), seed=0, classes=digits)
    cifar = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    assert add_label_noise(balanced(5), 10, NoiseSpec("asymmetric", 0.4), seed=0, classes=cifar).shape == (50,)


def test_a_seed_beyond_64_bits_is_a_user_error():
    with pytest.raises(TicketlabError, match="--noise-seed must be a whole number in"):
        add_label_noise(balanced(2), 10, parse_noise("flip:0.1"), seed=10**23)


def test_a_rewritten_label_file_is_another_run(tmp_path):
    import ticketlab
    from ticketlab.config import DataConfig

    from helpers import tiny_dataset

    ds, path = tiny_dataset(n=64), tmp_path / "labels.npz"
    np.savez(path, noisy=ds.train_y.numpy())
    options = dict(model="conv_2", epochs=1, batch_size=32, progress=False, store=tmp_path / "store",
                   data=DataConfig(noise=f"file:{path}:noisy"))
    first = ticketlab.train(dataset=ds, **options)
    np.savez(path, noisy=((ds.train_y + 1) % 4).numpy())
    second = ticketlab.train(dataset=ds, **options)
    assert first.run_id != second.run_id and not second.reused
    assert first.summary["noise_rate"] == 0.0 and second.summary["noise_rate"] == 1.0
    moved = tmp_path / "elsewhere" / "copy.npz"  # the same labels at another path: the same run
    moved.parent.mkdir()
    moved.write_bytes(path.read_bytes())
    third = ticketlab.train(dataset=ds, **{**options, "data": DataConfig(noise=f"file:{moved}:noisy")})
    assert third.reused and third.run_id == second.run_id
    from ticketlab.store import RunStore

    stored = RunStore(tmp_path / "store").get(third.run_id).config  # the stored run names the file it read
    assert stored["data"]["noise"] == f"file:{path}:noisy"


def test_one_noise_setting_written_differently_is_one_setting():
    """Equal settings share run ids: "uniform:.40" trained the same labels as "uniform:0.4"."""
    from ticketlab.config import DataConfig

    plain = DataConfig(noise="uniform:0.4")
    for spelling in ("uniform:.4", "uniform:0.40", " uniform:0.4", "uniform:4e-1"):
        assert DataConfig(noise=spelling) == plain
    assert DataConfig(noise="flip:0.4") != plain and DataConfig(noise="file:a.npz:worse").noise == "file:a.npz:worse"
    assert DataConfig(noise="uniform:x").noise == "uniform:x"  # refused where the noise is drawn, with its message
