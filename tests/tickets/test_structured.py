import pytest
import torch

from ticketlab.errors import TicketlabError
from ticketlab.models import build_model
from ticketlab.sparsity import global_masks, magnitude, prunable_parameters, random_like, shuffle_within_layers
from ticketlab.sparsity.semistructured import is_two_four
from ticketlab.tickets.structured import Structure, parse_nm


def _ticket(model_name, kind, density=0.4, **options):
    model = build_model(model_name, num_classes=10, in_channels=3, image_size=16)
    names = list(dict(prunable_parameters(model)))
    structure = Structure(kind, model, names, **options)
    weights = {n: p.detach() for n, p in model.named_parameters() if n in names}
    if kind == "nm":
        return structure, structure.nm_masks(weights)
    return structure, structure.apply(global_masks(magnitude(weights), density), model)


def _channels(mask):
    return int(mask.flatten(1).any(1).sum())


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_a_drawn_channel_baseline_keeps_the_tickets_channel_counts_refill_plus_included(rate):
    structure, ticket = _ticket("cifar_resnet_20", "channel", refill_rate=rate)
    generator = torch.Generator().manual_seed(0)
    for drawn in (random_like(ticket, generator), shuffle_within_layers(ticket, generator)):
        like = structure.like(drawn, ticket, None, generator)
        assert {n: int(m.sum()) for n, m in like.items()} == {n: int(m.sum()) for n, m in ticket.items()}
        assert {n: _channels(m) for n, m in like.items() if m.dim() == 4} == \
               {n: _channels(m) for n, m in ticket.items() if m.dim() == 4}
        assert not all(torch.equal(like[n], ticket[n]) for n in ticket)  # other channels than the ticket's


def test_a_channel_baseline_keeps_a_count_off_the_multiple_that_dropping_a_constant_filter_left():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3), torch.nn.BatchNorm2d(64), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, 10))
    structure = Structure("channel", model, ["0.weight", "5.weight"], refill_multiple=16)
    ticket = structure.apply({"0.weight": torch.rand(64, 3, 3, 3, generator=torch.Generator().manual_seed(0)) < 0.25,
                              "5.weight": torch.ones(10, 64, dtype=torch.bool)})
    assert _channels(ticket["0.weight"]) == 16
    first = int(ticket["0.weight"].flatten(1).any(1).nonzero()[0])
    ticket["0.weight"][first] = False  # as a study drops a filter constant at the rewind point
    generator = torch.Generator().manual_seed(1)
    like = structure.like(random_like(ticket, generator), ticket, None, generator)
    assert _channels(like["0.weight"]) == 15 and int(like["0.weight"].sum()) == int(ticket["0.weight"].sum())


def test_a_random_group_baseline_is_the_tickets_blocks_at_random_rows_and_columns():
    structure, ticket = _ticket("conv_4", "group")
    generator = torch.Generator().manual_seed(0)
    like = structure.like(random_like(ticket, generator), ticket, None, generator)
    classifier = list(ticket)[-1]
    for name, mask in ticket.items():
        got = like[name].reshape(mask.shape[0], -1)
        want = mask.reshape(mask.shape[0], -1)
        assert int(got.sum()) == int(want.sum())
        if name != classifier:  # the same blocks: row and column sums are a permutation of the ticket's
            assert torch.equal(got.sum(1).sort().values, want.sum(1).sort().values)
            assert torch.equal(got.sum(0).sort().values, want.sum(0).sort().values)
    assert not all(torch.equal(like[n], ticket[n]) for n in ticket)


def test_drawn_nm_baselines_are_nm_masks_random_or_by_their_scores():
    structure, ticket = _ticket("lenet_300_100", "nm")
    generator = torch.Generator().manual_seed(0)
    fits = [n for n, m in ticket.items() if not m.all()]
    assert fits and all(is_two_four(ticket[n]) for n in fits)
    randomly = structure.like(random_like(ticket, generator), ticket, None, generator)
    assert all(is_two_four(randomly[n]) for n in fits) and not torch.equal(randomly[fits[0]], ticket[fits[0]])
    scores = {n: torch.rand(m.shape, generator=generator) for n, m in ticket.items()}
    ranked = structure.like(global_masks(scores, 0.5), ticket, scores, generator)
    assert all(is_two_four(ranked[n]) for n in fits)
    assert torch.equal(ranked[fits[0]], structure.nm_masks(scores)[fits[0]])


@pytest.mark.parametrize("text", ["4:2", "0:4", "2", "a:b", "\u00b2:4", "2:4:8"])
def test_nm_patterns_are_checked(text):
    with pytest.raises(TicketlabError, match="N:M"):
        parse_nm(text)
