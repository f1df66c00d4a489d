import pytest
import torch
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.sparsity import (
    apply_masks,
    check_masks,
    density_report,
    erk,
    global_masks,
    layerwise_masks,
    load_masks,
    masks_from_scores,
    nm_masks,
    overall_density,
    prune_fraction,
    random_like,
    save_masks,
    shuffle_within_layers,
)
from ticketlab.store.files import write_tensors

T, F = True, False


def rand_scores(seed=0, shapes=(("a", (20, 10)), ("b", (30, 5, 3)), ("out", (4, 25)))):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(s, generator=g) for n, s in shapes}


def count(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def test_global_keeps_exactly_the_largest_across_layers():
    scores = {"a": torch.tensor([[0.1, 5.0], [3.0, 0.2]]), "b": torch.tensor([1.0, 4.0, 0.05, 2.0])}
    masks = global_masks(scores, 0.5)
    assert masks["a"].dtype == torch.bool
    assert masks["a"].tolist() == [[F, T], [T, F]]
    assert masks["b"].tolist() == [F, T, F, T]
    assert count(global_masks(scores, 0.3)) == {"a": 1, "b": 1}  # round(2.4) = 2: 5.0 and 4.0


def test_ties_are_broken_by_position():
    scores = {"a": torch.ones(2, 2), "b": torch.ones(3)}
    masks = global_masks(scores, 3 / 7)
    assert masks["a"].tolist() == [[T, T], [T, F]] and masks["b"].tolist() == [F, F, F]
    layer = layerwise_masks({"b": torch.tensor([2.0, 1.0, 2.0, 2.0])}, {"b": 0.5})
    assert layer["b"].tolist() == [T, F, T, F]
    # many ties (where an unstable sort scrambles positions): the lowest indices of each level win
    levels = (torch.arange(30000) % 7).float()[torch.randperm(30000, generator=torch.Generator().manual_seed(0))]
    values = levels.tolist()
    expected = torch.zeros(30000, dtype=torch.bool)
    expected[sorted(range(30000), key=lambda i: (-values[i], i))[:15000]] = True
    assert torch.equal(global_masks({"a": levels}, 0.5)["a"], expected)


def test_pruned_weights_are_never_revived():
    scores = {"a": torch.tensor([9.0, 8.0, 1.0, 2.0]), "b": torch.tensor([7.0, 3.0])}
    current = {"a": torch.tensor([F, T, T, T]), "b": torch.tensor([T, F])}
    masks = global_masks(scores, 0.5, current)
    assert masks["a"].tolist() == [F, T, F, T] and masks["b"].tolist() == [T, F]
    with pytest.raises(TicketlabError, match="never revives"):
        global_masks(scores, 5 / 6, current)
    layer = layerwise_masks(scores, {"a": 0.5, "b": 0.5}, current)
    assert layer["a"].tolist() == [F, T, F, T] and layer["b"].tolist() == [T, F]


def test_layerwise_counts_and_budgets():
    scores = rand_scores()
    densities = {"a": 0.5, "b": 0.1, "out": 1.0}
    masks = layerwise_masks(scores, densities)
    for n, s in scores.items():
        k = round(densities[n] * s.numel())
        assert int(masks[n].sum()) == k
        assert s[masks[n]].min() > s[~masks[n]].max() if k < s.numel() else masks[n].all()
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    by_erk = masks_from_scores(scores, 0.2, "erk")
    assert count(by_erk) == {n: round(d * scores[n].numel()) for n, d in erk(shapes, 0.2).items()}
    assert all(torch.equal(masks_from_scores(scores, 0.2)[n], m) for n, m in global_masks(scores, 0.2).items())
    with pytest.raises(TicketlabError, match="global"):
        masks_from_scores(scores, 0.2, "nope")
    with pytest.raises(TicketlabError, match="one density per scored layer"):
        layerwise_masks(scores, {"a": 0.5})


def test_prune_fraction_global_removes_the_lowest_remaining():
    scores = rand_scores()
    current = global_masks(rand_scores(seed=1), 0.7)
    remaining = sum(count(current).values())
    masks = prune_fraction(scores, current, 0.2)
    assert sum(count(masks).values()) == round(0.8 * remaining)
    for n in scores:
        assert not (masks[n] & ~current[n]).any()
    kept = torch.cat([scores[n][masks[n]] for n in scores])
    removed = torch.cat([scores[n][current[n] & ~masks[n]] for n in scores])
    assert kept.min() > removed.max()
    # from no masks (IMP level 1): 80% of all weights
    total = sum(s.numel() for s in scores.values())
    assert sum(count(prune_fraction(scores, None, 0.2)).values()) == round(0.8 * total)


def test_prune_fraction_layerwise_with_per_layer_fractions():
    scores = rand_scores()
    current = global_masks(rand_scores(seed=1), 0.7)
    before = count(current)
    masks = prune_fraction(scores, current, 0.2, "layerwise", layer_fractions={"out": 0.1, "b": 0.0})
    assert count(masks) == {"a": round(0.8 * before["a"]), "b": before["b"], "out": round(0.9 * before["out"])}
    assert torch.equal(masks["b"], current["b"])
    for n in scores:
        if count(masks)[n] < before[n]:
            assert scores[n][masks[n]].min() > scores[n][current[n] & ~masks[n]].max()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.2])
def test_prune_fraction_errors(fraction):
    with pytest.raises(TicketlabError, match=r"fraction must be in \(0, 1\)"):
        prune_fraction(rand_scores(), None, fraction)


def test_prune_fraction_option_errors():
    with pytest.raises(TicketlabError, match="layerwise"):
        prune_fraction(rand_scores(), None, 0.2, "global", layer_fractions={"out": 0.1})
    with pytest.raises(TicketlabError, match="fc"):
        prune_fraction(rand_scores(), None, 0.2, "layerwise", layer_fractions={"fc": 0.1})
    with pytest.raises(TicketlabError, match="scope"):
        prune_fraction(rand_scores(), None, 0.2, "per-channel")
    with pytest.raises(TicketlabError, match="current masks cover"):
        prune_fraction(rand_scores(), {"a": torch.ones(20, 10, dtype=torch.bool)}, 0.2)


def _check_groups(score, mask, n, m):
    groups, kept = score.reshape(-1, m), mask.reshape(-1, m)
    assert (kept.sum(1) == n).all()
    top = torch.topk(groups, n, dim=1).values
    assert torch.equal(torch.sort(groups[kept].view(-1, n), dim=1).values, torch.sort(top, dim=1).values)


def test_nm_keeps_the_n_largest_of_every_group_along_the_input_dimension():
    g = torch.Generator().manual_seed(0)
    scores = {"fc": torch.rand(3, 16, generator=g), "conv": torch.rand(4, 8, 3, 3, generator=g)}
    masks = nm_masks(scores, 2, 4)
    _check_groups(scores["fc"], masks["fc"], 2, 4)
    # conv: groups of 4 input channels at each (o, kh, kw), i.e. along I in the [O, kh, kw, I] view
    _check_groups(scores["conv"].permute(0, 2, 3, 1), masks["conv"].permute(0, 2, 3, 1), 2, 4)
    assert masks["conv"].shape == (4, 8, 3, 3) and masks["conv"].is_contiguous()
    assert overall_density(nm_masks(scores, 1, 4)) == 0.25


def test_nm_errors():
    with pytest.raises(TicketlabError, match="stem.weight.*3 inputs"):
        nm_masks({"stem.weight": torch.rand(16, 3, 3, 3)})
    with pytest.raises(TicketlabError, match="n <= m"):
        nm_masks({"fc": torch.rand(2, 8)}, n=5, m=4)


@pytest.mark.parametrize("baseline", [random_like, shuffle_within_layers])
def test_random_baselines_keep_per_layer_counts(baseline):
    masks = layerwise_masks(rand_scores(), {"a": 0.3, "b": 0.05, "out": 0.9})
    new = baseline(masks, torch.Generator().manual_seed(1))
    assert count(new) == count(masks)
    assert all(new[n].shape == masks[n].shape and new[n].dtype == torch.bool for n in masks)
    assert not torch.equal(new["a"], masks["a"]) and not torch.equal(new["b"], masks["b"])
    again = baseline(masks, torch.Generator().manual_seed(1))
    other = baseline(masks, torch.Generator().manual_seed(2))
    assert all(torch.equal(new[n], again[n]) for n in masks)
    assert not torch.equal(new["a"], other["a"])


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 2)


def test_density_report_and_overall_density():
    net = Net()
    masks = {"fc.weight": torch.tensor([[T, F, F, F], [T, T, F, F]])}
    assert overall_density(masks) == 3 / 8
    report = density_report(masks)
    assert report == {"layers": {"fc.weight": {"kept": 3, "total": 8, "density": 3 / 8}},
                      "total": {"kept": 3, "total": 8, "density": 3 / 8}}
    full = density_report(masks, net)
    assert list(full["layers"]) == ["conv.weight", "fc.weight"]
    assert full["layers"]["conv.weight"] == {"kept": 108, "total": 108, "density": 1.0}
    assert full["total"] == {"kept": 111, "total": 116, "density": 111 / 116}
    # a completed channel mask's bias and BatchNorm entries are not weights of the prunable layers
    completed = {**masks, "fc.bias": torch.tensor([T, F]), "conv.bias": torch.ones(4, dtype=torch.bool)}
    assert density_report(completed, net) == full


def test_apply_and_check_masks():
    net = Net()
    before = net.fc.weight.detach().clone()
    mask = torch.rand(2, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    apply_masks(net, {"fc.weight": mask})
    assert torch.equal(net.fc.weight[mask], before[mask]) and (net.fc.weight[~mask] == 0).all()
    with pytest.raises(TicketlabError, match="mask does not fit the model.*fc2.weight"):
        check_masks(net, {"fc2.weight": mask})
    with pytest.raises(TicketlabError, match=r"mask does not fit the model.*\(4, 2\)"):
        apply_masks(net, {"fc.weight": mask.T})


def test_save_load_round_trip(tmp_path):
    masks = layerwise_masks(rand_scores(), {"a": 0.3, "b": 0.05, "out": 0.9})
    save_masks(tmp_path / "m.safetensors", masks)
    loaded = load_masks(tmp_path / "m.safetensors")
    assert set(loaded) == set(masks)
    assert all(loaded[n].dtype == torch.bool and torch.equal(loaded[n], masks[n]) for n in masks)
    with pytest.raises(TicketlabError, match="no mask file"):
        load_masks(tmp_path / "missing.safetensors")
    write_tensors(tmp_path / "w.safetensors", {"a": torch.rand(3)})
    with pytest.raises(TicketlabError, match="not a mask file"):
        load_masks(tmp_path / "w.safetensors")


def test_nan_scores_are_refused():
    with pytest.raises(TicketlabError, match="NaN"):
        global_masks({"a": torch.tensor([1.0, float("nan")])}, 0.5)


def test_a_mask_with_values_between_zero_and_one_is_refused():
    net = nn.Linear(4, 2)
    with pytest.raises(TicketlabError, match="other than 0 and 1"):
        apply_masks(net, {"weight": torch.full((2, 4), 0.5)})
    apply_masks(net, {"weight": torch.ones(2, 4)})  # float 0/1 masks stay fine
