import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.sparsity import (
    REFILL_CRITERIA,
    channel_counts,
    channel_scores,
    is_channel_structured,
    kept_channels,
    refill,
    refill_layer,
)

from helpers import TinyNet

T, F_ = True, False


def rows_mask(counts, per):
    """[len(counts), per] mask whose row i keeps counts[i] weights, at positions that differ per row."""
    mask = torch.zeros(len(counts), per, dtype=torch.bool)
    for i, k in enumerate(counts):
        mask[i, :k] = True
        mask[i] = mask[i].roll(i)
    return mask


def assert_close(actual, expected):
    # torch.testing.assert_close costs over a second of imports on first use
    assert actual.shape == expected.shape and torch.allclose(actual, expected, rtol=1e-5, atol=1e-6), (actual, expected)


def kept_rows(mask):
    return kept_channels(mask).nonzero().squeeze(1).tolist()


# ---- channel views --------------------------------------------------------------------------


def test_kept_channels_and_structure_of_conv_and_linear_masks():
    conv = torch.zeros(3, 2, 2, 2, dtype=torch.bool)
    conv[0] = True
    conv[2, 1, 0, 1] = True
    assert kept_channels(conv).tolist() == [T, F_, T]
    assert not is_channel_structured(conv)
    conv[2] = True
    assert is_channel_structured(conv)
    assert channel_counts(conv).tolist() == [8.0, 0.0, 8.0]
    conv[:, 1] = False  # input channel 1 dropped upstream: every kept row reads the rest whole
    assert is_channel_structured(conv)
    conv[0, 0, 0, 0] = False  # part of an input channel
    assert not is_channel_structured(conv)
    conv[2, 0, 0, 0] = False
    assert not is_channel_structured(conv)

    linear = torch.tensor([[T, T, T], [F_, F_, F_], [F_, T, F_]])
    assert kept_channels(linear).tolist() == [T, F_, T]
    assert not is_channel_structured(linear)
    assert is_channel_structured(linear[:2])
    assert channel_counts(linear).dtype.is_floating_point
    assert channel_counts(linear).tolist() == [3.0, 0.0, 1.0]


def test_a_one_dimensional_mask_is_rejected():
    with pytest.raises(TicketlabError, match="1-D"):
        kept_channels(torch.ones(4, dtype=torch.bool))


# ---- refill_layer ---------------------------------------------------------------------------


def test_refill_keeps_the_highest_count_channels_whole():
    mask = rows_mask([3, 1, 4, 0, 2], per=4)  # nnz 10, c = 2.5
    out = refill_layer(mask)
    assert out.dtype == torch.bool and out.shape == mask.shape
    assert is_channel_structured(out)
    assert kept_rows(out) == [0, 2]
    assert out[[0, 2]].all() and not out[[1, 3, 4]].any()


def test_refill_plus_keeps_int_c_plus_r_times_the_rest():
    mask = rows_mask([3, 1, 4, 0, 2], per=4)  # c = 2.5, C - c = 2.5
    assert kept_rows(refill_layer(mask, r=0.5)) == [0, 2, 4]  # int(3.75) = 3
    assert kept_rows(refill_layer(mask, r=0.9)) == [0, 1, 2, 4]  # int(4.75) = 4


@pytest.mark.parametrize("density", [0.05, 0.3, 0.62, 0.9])
def test_refill_at_r0_keeps_at_most_the_parameter_count_and_less_than_a_channel_fewer(density):
    g = torch.Generator().manual_seed(int(density * 100))
    mask = torch.rand(16, 6, 3, 3, generator=g) < density
    per, nnz = 6 * 3 * 3, int(mask.sum())
    out = refill_layer(mask)
    assert is_channel_structured(out)
    assert int(kept_channels(out).sum()) == int(nnz / per)
    assert nnz - per < int(out.sum()) <= nnz


@pytest.mark.parametrize("c_out, full, r, expected", [(100, 0, 0.29, 29), (102, 2, 0.57, 59), (10, 3, 0.1, 3)])
def test_refill_plus_counts_channels_exactly_where_floats_fall_short(c_out, full, r, expected):
    mask = torch.zeros(c_out, 4, 3, 3, dtype=torch.bool)
    mask[:full] = True  # c = full exactly; c + (C_out - c) * r is a whole number that floats put just below
    assert int(refill_layer(mask, r=r).flatten(1).all(1).sum()) == expected


def test_refill_ties_go_to_the_lower_channel_index():
    mask = rows_mask([2, 3, 3, 3, 0], per=4)  # c = 2.75: two of the three channels with 3
    assert kept_rows(refill_layer(mask)) == [1, 2]
    assert kept_rows(refill_layer(mask, torch.ones(5))) == [0, 1]


def test_refill_plus_can_revive_an_empty_channel_that_another_criterion_ranks_high():
    mask = rows_mask([3, 1, 4, 0, 2], per=4)
    scores = torch.tensor([0.1, 0.2, 0.3, 5.0, 0.0])
    out = refill_layer(mask, scores, r=0.5)
    assert kept_rows(out) == [1, 2, 3]
    assert out[3].all()


def test_refill_keeps_at_least_one_channel():
    assert kept_rows(refill_layer(torch.zeros(3, 4, dtype=torch.bool))) == [0]


def full_rows(c_out, full, per=4):
    """[c_out, per] mask whose first `full` rows are whole (c = full exactly), ranked by their index."""
    mask = torch.zeros(c_out, per, dtype=torch.bool)
    mask[:full] = True
    return mask


@pytest.mark.parametrize("c_out, full, multiple, expected", [
    (64, 51, 16, 48),  # 3.19 multiples: down
    (64, 57, 16, 64),  # 3.56: up
    (64, 56, 16, 64),  # exactly half way: up
    (64, 40, 16, 48),
    (64, 3, 16, 16),  # never below one multiple
    (60, 58, 16, 60),  # the nearest multiple, 64, is wider than the layer: all of it
    (64, 51, 8, 48),
    (64, 51, 1, 51),
    (10, 3, 16, 3),  # a layer no wider than the multiple keeps the rule's count
])
def test_refill_multiple_keeps_the_nearest_multiple_of_channels(c_out, full, multiple, expected):
    out = refill_layer(full_rows(c_out, full), multiple=multiple)
    assert kept_rows(out) == list(range(expected))  # the best-ranked channels: the full rows, then by index
    assert is_channel_structured(out)


def test_refill_multiple_rounds_refill_plus_and_tied_groups_by_their_own_count():
    mask = full_rows(64, 40)  # c = 40, refill+ 0.25: 40 + 24 * 0.25 = 46 channels, 48 rounded
    assert int(kept_channels(refill_layer(mask, r=0.25, multiple=16)).sum()) == 48
    tied = refill({"a": full_rows(64, 20), "b": full_rows(64, 44, per=2), "c": full_rows(64, 20)},
                  tied=[["a", "b"]], multiple=16)
    # the group's pooled budget (20 * 4 + 44 * 2) / 6 = 28 channels: 32 shared; c alone: 20 -> 16
    assert kept_rows(tied["a"]) == kept_rows(tied["b"]) == list(range(32))
    assert kept_rows(tied["c"]) == list(range(16))


@pytest.mark.parametrize("multiple", [0, -16, True, 2.0])
def test_refill_rejects_a_multiple_that_is_not_a_positive_integer(multiple):
    with pytest.raises(TicketlabError, match="refill multiple must be a positive integer"):
        refill_layer(full_rows(64, 40), multiple=multiple)
    with pytest.raises(TicketlabError, match="refill multiple must be a positive integer"):
        refill({"a": full_rows(64, 40)}, multiple=multiple)


@pytest.mark.parametrize("width", [0, 9, 2.5, True])
def test_refill_rejects_live_widths_outside_a_row(width):
    with pytest.raises(TicketlabError, match=r"widths\['a'\] .* from 1 to 8"):
        refill({"a": torch.ones(4, 8, dtype=torch.bool)}, widths={"a": width})


@pytest.mark.parametrize("r", [1.0, -0.1, float("nan")])
def test_refill_rejects_a_rate_outside_0_1(r):
    with pytest.raises(TicketlabError, match="refill rate r"):
        refill_layer(rows_mask([1, 2], per=3), r=r)
    with pytest.raises(TicketlabError, match="refill rate r"):
        refill({"a": rows_mask([1, 2], per=3)}, r=r)


def test_refill_layer_rejects_scores_of_the_wrong_shape_or_not_finite():
    with pytest.raises(TicketlabError, match="shape"):
        refill_layer(rows_mask([1, 2], per=3), torch.ones(3))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(TicketlabError, match="NaN or infinity"):
            refill_layer(rows_mask([1, 2], per=3), torch.tensor([1.0, bad]))


# ---- refill over a mask set -----------------------------------------------------------------


def test_refill_leaves_keep_layers_unchanged_and_refills_the_others_alone():
    masks = {"a": rows_mask([3, 1, 4, 0, 2], per=4), "fc": rows_mask([1, 2, 0], per=5)}
    out = refill(masks, keep={"fc", "not_masked"})
    assert list(out) == ["a", "fc"]
    assert torch.equal(out["fc"], masks["fc"])
    assert torch.equal(out["a"], refill_layer(masks["a"]))


def test_refill_takes_a_bare_keep_name_as_one_name_not_as_its_substrings():
    masks = {"conv1.weight": rows_mask([3, 1, 4, 0], per=4), "layer1.0.conv1.weight": rows_mask([1, 2, 0], per=5)}
    out = refill(masks, keep="layer1.0.conv1.weight")
    assert torch.equal(out["layer1.0.conv1.weight"], masks["layer1.0.conv1.weight"])
    assert torch.equal(out["conv1.weight"], refill_layer(masks["conv1.weight"]))


def tied_masks():
    # a: 10 weights per channel, counts [6, 5, 0, 0]; b: 2 per channel, counts [0, 1, 2, 2].
    # Pooled budget (11 + 5) / (10 + 2) = 1.33 -> 1 channel. Normalised votes
    # [6, 5, 0, 0]/11 + [0, 1, 2, 2]/5 = [.55, .65, .4, .4] pick channel 1; raw counts [6, 6, 2, 2]
    # would pick 0, and separate refills would keep channel 0 in a and channels 2, 3 in b.
    return {"a": rows_mask([6, 5, 0, 0], per=10), "b": rows_mask([0, 1, 2, 2], per=2), "c": rows_mask([1, 3], per=3)}


def test_a_tied_group_shares_one_channel_set_with_the_pooled_budget_and_equal_votes():
    masks = tied_masks()
    out = refill(masks, tied=[("a", "b", "excluded_stem")])
    assert kept_rows(out["a"]) == kept_rows(out["b"]) == [1]
    assert is_channel_structured(out["a"]) and is_channel_structured(out["b"])
    assert torch.equal(out["c"], refill_layer(masks["c"]))
    assert kept_rows(refill(masks, tied=[("b", "a")])["a"]) == [1]  # the order of the members does not matter
    # refill+: int(1.33 + 2.67 * 0.6) = 2 shared channels (b alone would get 3, the mean budget 1.8 too)
    plus = refill(masks, tied=[["a", "b"]], r=0.6)
    assert kept_rows(plus["a"]) == kept_rows(plus["b"]) == [0, 1]


def test_votes_equal_in_exact_arithmetic_tie_to_the_lower_index_whatever_the_member_order():
    # normalised votes: channel 0 = .3 + .2 + .1 and channel 1 = .1 + .2 + .3, equal but for float rounding,
    # which in float64 puts them an ulp apart in one summation order or the other
    masks = {"a": rows_mask([3, 1, 6], per=10), "b": rows_mask([2, 2, 6], per=10), "c": rows_mask([1, 3, 6], per=10)}
    for order in (["a", "b", "c"], ["c", "b", "a"], ["b", "a", "c"]):
        assert kept_rows(refill(masks, tied=[order], r=0.5)["a"]) == [0, 2]


def test_a_tied_group_ranks_by_given_scores():
    masks = tied_masks()
    scores = {"a": torch.tensor([0.0, 0.0, 1.0, 0.0]), "b": torch.tensor([0.0, 0.0, 0.0, 3.0]), "c": torch.ones(2)}
    out = refill(masks, tied=[["a", "b"]], scores=scores, r=0.5)
    # normalised votes [0, 0, 1, 1]: the tie between 2 and 3 goes to 2, then channel 3
    assert kept_rows(out["a"]) == kept_rows(out["b"]) == [2, 3]


def test_a_keep_layer_inside_a_tied_group_stays_unchanged_and_does_not_vote():
    masks = tied_masks()
    out = refill(masks, tied=[["a", "b"]], keep={"a"})
    assert torch.equal(out["a"], masks["a"])
    assert torch.equal(out["b"], refill_layer(masks["b"]))


def test_tied_groups_are_checked():
    masks = tied_masks()
    with pytest.raises(TicketlabError, match="same number of output channels"):
        refill(masks, tied=[["a", "c"]])
    with pytest.raises(TicketlabError, match="two tied groups"):
        refill(masks, tied=[["a", "b"], ["b", "excluded_stem"]])
    with pytest.raises(TicketlabError, match="bare name"):
        refill(masks, tied=["ab"])


def test_refill_checks_scores_against_the_layers():
    masks = tied_masks()
    with pytest.raises(TicketlabError, match="no channel scores for layer c"):
        refill(masks, scores={"a": torch.ones(4), "b": torch.ones(4)})
    with pytest.raises(TicketlabError, match="layer c"):
        refill(masks, scores={"a": torch.ones(4), "b": torch.ones(4), "c": torch.ones(3)})


# ---- channel scores -------------------------------------------------------------------------


def tiny_model_and_masks(seed=0):
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():  # running statistics far from (0, 1), so eval mode is visible in the scores
        model.bn.running_mean.copy_(torch.randn(8))
        model.bn.running_var.copy_(torch.rand(8) + 0.5)
    g = torch.Generator().manual_seed(seed)
    masks = {name: torch.rand(p.shape, generator=g) < 0.5 for name, p in model.named_parameters() if p.dim() > 1}
    return model, masks


def tiny_batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 3, 5, 5, generator=g), torch.randint(0, 4, (6,), generator=g)


def direct_outputs(model, masks, x):
    """Conv -> BN (eval) -> ReLU -> mean -> Linear written out, with the masks applied."""
    a = F.conv2d(x, model.conv.weight * masks["conv.weight"], model.conv.bias, padding=1)
    bn = model.bn
    h = F.batch_norm(a, bn.running_mean, bn.running_var, bn.weight, bn.bias, training=False, eps=bn.eps)
    z = F.linear(torch.relu(h).mean((2, 3)), model.fc.weight * masks["fc.weight"], model.fc.bias)
    return a, z


def test_count_scores_are_row_sums_and_l1_scores_sum_the_masked_weights():
    model, masks = tiny_model_and_masks()
    counts = channel_scores("count", model, masks)
    assert counts["conv.weight"].tolist() == masks["conv.weight"].flatten(1).sum(1).float().tolist()

    linear = nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[1.0, -2.0, 3.0], [-4.0, 5.0, -6.0]]))
    l1 = channel_scores("l1", linear, {"weight": torch.tensor([[T, T, F_], [F_, T, T]])})
    assert l1["weight"].tolist() == [3.0, 11.0]


def test_activation_and_taylor_scores_match_a_direct_computation_and_leave_the_model_alone():
    model, masks = tiny_model_and_masks()
    before = copy.deepcopy(model.state_dict())
    x, y = tiny_batch()
    a, z = direct_outputs(model, masks, x)
    ga, gz = torch.autograd.grad(F.cross_entropy(z, y), [a, z])

    activation = channel_scores("activation", model, masks, (x, y))
    assert_close(activation["conv.weight"], a.detach().pow(2).sum((0, 2, 3)).sqrt())
    assert_close(activation["fc.weight"], z.detach().pow(2).sum(0).sqrt())

    taylor = channel_scores("taylor", model, masks, (x, y))
    assert_close(taylor["conv.weight"], (a * ga).sum((2, 3)).abs().mean(0).detach())
    assert_close(taylor["fc.weight"], (z * gz).abs().mean(0).detach())

    assert model.training and all(m.training for m in model.modules())
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_taylor_uses_the_given_loss():
    model, masks = tiny_model_and_masks(seed=1)
    x, y = tiny_batch(seed=1)

    def first_logit(logits, targets):
        return logits[:, 0].sum()

    a, z = direct_outputs(model, masks, x)
    (ga,) = torch.autograd.grad(first_logit(z, y), [a])
    taylor = channel_scores("taylor", model, masks, (x, y), loss_fn=first_logit)
    assert_close(taylor["conv.weight"], (a * ga).sum((2, 3)).abs().mean(0).detach())


def test_taylor_takes_the_absolute_value_per_example_so_opposite_examples_do_not_cancel():
    model = nn.Sequential(nn.Linear(1, 1, bias=False))
    nn.init.ones_(model[0].weight)
    masks = {"0.weight": torch.ones(1, 1, dtype=torch.bool)}
    x, sign = torch.ones(2, 1), torch.tensor([1.0, -1.0])

    def signed(logits, targets):  # example 0 gains from the channel, example 1 loses the same
        return (logits[:, 0] * targets).sum()

    # summed over the batch first, the two examples' a * dL/da = +1 and -1 would give 0
    assert channel_scores("taylor", model, masks, (x, sign), loss_fn=signed)["0.weight"].item() == 1.0


def test_scores_see_the_conv_output_before_an_in_place_relu_even_in_a_frozen_model():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(4 * 3 * 3, 3))
    model.requires_grad_(False)
    masks = {"0.weight": torch.ones(4, 2, 3, 3, dtype=torch.bool)}
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(5, 2, 5, 5, generator=g), torch.tensor([0, 1, 2, 0, 1])

    a = model[0](x).requires_grad_(True)
    (ga,) = torch.autograd.grad(F.cross_entropy(model[3](torch.relu(a).flatten(1)), y), [a])
    activation = channel_scores("activation", model, masks, (x, y))
    assert_close(activation["0.weight"], a.detach().pow(2).sum((0, 2, 3)).sqrt())
    taylor = channel_scores("taylor", model, masks, (x, y))
    assert_close(taylor["0.weight"], (a * ga).sum((2, 3)).abs().mean(0).detach())
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("criterion", ["activation", "taylor"])
def test_data_criteria_need_a_batch(criterion):
    model, masks = tiny_model_and_masks()
    with pytest.raises(TicketlabError, match=f"'{criterion}' needs one batch"):
        channel_scores(criterion, model, masks)


def test_unknown_criterion_lists_the_choices():
    model, masks = tiny_model_and_masks()
    with pytest.raises(TicketlabError, match=", ".join(REFILL_CRITERIA)):
        channel_scores("gradient", model, masks)


def test_activation_scores_need_conv_or_linear_layers():
    model, _ = tiny_model_and_masks()
    with pytest.raises(TicketlabError, match="not the weight of a Conv or Linear"):
        channel_scores("activation", model, {"bn.weight": torch.ones(8, dtype=torch.bool)}, tiny_batch())


def test_refill_counts_a_channel_by_its_live_weights_where_inputs_were_removed():
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:2, :4] = True  # two rows whose live half (columns 0-3) is whole: 8 weights
    assert kept_rows(refill({"a": mask})["a"].view(4, 8, 1, 1)) == [0]  # 8 / 8: one whole row's worth
    assert kept_rows(refill({"a": mask}, widths={"a": 4})["a"].view(4, 8, 1, 1)) == [0, 1]  # 8 / 4: two channels
