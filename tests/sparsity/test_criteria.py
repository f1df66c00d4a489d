import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ticketlab.errors import TicketlabError
from ticketlab.sparsity import (
    CRITERIA,
    compute_scores,
    global_masks,
    grasp,
    magnitude,
    overall_density,
    prune_at_init,
    random_scores,
    select_prunable,
    snip,
    synflow,
    synflow_scores,
)


def batch(n=16, features=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def mlp(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(dtype)


class ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv1(x)))
        x = F.max_pool2d(torch.relu(self.conv2(x)), 2)
        return self.fc(self.drop(x.mean((2, 3))))


def test_magnitude_and_random():
    w = {"a": torch.tensor([-2.0, 0.5, 0.0])}
    assert magnitude(w)["a"].tolist() == [2.0, 0.5, 0.0]
    r1 = random_scores({"a": torch.zeros(50)}, torch.Generator().manual_seed(3))["a"]
    r2 = random_scores({"a": torch.zeros(50)}, torch.Generator().manual_seed(3))["a"]
    assert torch.equal(r1, r2) and ((r1 >= 0) & (r1 < 1)).all() and r1.std() > 0.1


def test_snip_matches_the_softmax_regression_gradient():
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = batch()
    # d CE / dW = (softmax(xWᵀ + b) − onehot(y))ᵀ x / n
    p = torch.softmax(x @ model.weight.T + model.bias, dim=1)
    grad = (p - F.one_hot(y, 3).float()).T @ x / len(x)
    scores = snip(model, ["weight"], x, y)
    torch.testing.assert_close(scores["weight"], (grad * model.weight).abs().detach())


def test_snip_scores_in_train_mode_and_leaves_the_model_as_it_was():
    model = ConvNet().eval()
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 4
    state = copy.deepcopy(model.state_dict())
    rng = torch.get_rng_state()
    names = list(select_prunable(model))
    scores = snip(model, names, x, y)
    assert torch.equal(torch.get_rng_state(), rng)  # dropout drew from a forked generator

    reference = copy.deepcopy(model).train()  # batch statistics in BatchNorm, as SNIP scores
    reference.drop.p = model.drop.p = 0.0  # dropout is random; compare with it off in both
    params = dict(reference.named_parameters())
    grads = torch.autograd.grad(F.cross_entropy(reference(x), y), [params[n] for n in names])
    expected = {n: (g * params[n]).abs().detach() for n, g in zip(names, grads)}
    torch.testing.assert_close(snip(model, names, x, y), expected)
    eval_mode = copy.deepcopy(model).eval()
    wrong = torch.autograd.grad(F.cross_entropy(eval_mode(x), y), eval_mode.conv1.weight)[0]
    assert not torch.allclose((wrong * eval_mode.conv1.weight).abs(), expected["conv1.weight"])
    assert set(scores) == set(names)

    assert not model.training and not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


@pytest.mark.parametrize("temperature", [200.0, 1.0])
def test_grasp_is_w_times_hessian_gradient_product(temperature):
    model = mlp(dtype=torch.float64)
    x, y = batch()
    x = x.double()
    names = ["0.weight", "2.weight"]
    params = {n: p.detach() for n, p in model.named_parameters()}
    sizes = [params[n].numel() for n in names]

    def loss(flat):
        w = {n: part.view(params[n].shape) for n, part in zip(names, flat.split(sizes))}
        return F.cross_entropy(functional_call(model, {**params, **w}, (x,)) / temperature, y)

    theta = torch.cat([params[n].flatten() for n in names])
    g = torch.autograd.functional.jacobian(loss, theta)
    _, hg = torch.autograd.functional.hvp(loss, theta, g)  # full Hessian: cross-layer terms included
    expected = dict(zip(names, (theta * hg).split(sizes)))
    scores = grasp(model, names, x, y, temperature=temperature)
    for n in names:
        # we return w ⊙ Hg = −(the paper's −w ⊙ Hg), so that the paper's pruned weights rank lowest
        torch.testing.assert_close(scores[n].flatten(), expected[n], rtol=1e-9, atol=1e-14)
    assert all(p.grad is None for p in model.parameters())


def test_grasp_temperature_changes_the_scores():
    model = mlp()
    x, y = batch()
    a, b = grasp(model, ["0.weight"], x, y), grasp(model, ["0.weight"], x, y, temperature=1.0)
    assert not torch.allclose(a["0.weight"], b["0.weight"])


def test_synflow_one_round_matches_the_closed_form():
    # R = 1ᵀ(|W2|(|W1|1 + |b1|) + |b2|): dR/d|W1|_ij = (1ᵀ|W2|)_i, dR/d|W2|_ki = (|W1|1 + |b1|)_i
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    w1, b1, w2 = model[0].weight.detach().clone(), model[0].bias.detach().clone(), model[2].weight.detach().clone()
    names = ["0.weight", "2.weight"]

    def expected(m1):
        a1, a2 = (w1 * m1).abs().double(), w2.abs().double()
        hidden = a1.sum(1) + b1.abs().double()
        return {"0.weight": a1 * a2.sum(0)[:, None], "2.weight": a2 * hidden[None, :]}

    scores = synflow_scores(model, names, (4,))
    torch.testing.assert_close(scores, expected(torch.ones_like(w1)))
    m1 = torch.rand(3, 4, generator=torch.Generator().manual_seed(0)) > 0.5
    masks = {"0.weight": m1, "2.weight": torch.ones(2, 3, dtype=torch.bool)}
    torch.testing.assert_close(synflow_scores(model, names, (4,), masks), expected(m1))
    assert torch.equal(model[0].weight, w1) and model[0].weight.dtype == torch.float32  # model untouched


def test_iterative_synflow_follows_its_schedule_and_meets_the_target():
    model = ConvNet()
    names = list(select_prunable(model))
    total = sum(p.numel() for p in select_prunable(model).values())
    masks = synflow(model, names, (3, 6, 6), density=0.05, iterations=10)
    assert sum(int(m.sum()) for m in masks.values()) == round(0.05 * total)

    one = synflow(model, names, (3, 6, 6), density=0.1, iterations=1)
    direct = global_masks(synflow_scores(model, names, (3, 6, 6)), 0.1)
    assert all(torch.equal(one[n], direct[n]) for n in names)

    two = synflow(model, names, (3, 6, 6), density=0.1, iterations=2)
    step1 = global_masks(synflow_scores(model, names, (3, 6, 6)), 0.1 ** 0.5)
    step2 = global_masks(synflow_scores(model, names, (3, 6, 6), step1), 0.1, current=step1)
    assert all(torch.equal(two[n], step2[n]) for n in names)
    assert any(not torch.equal(two[n], one[n]) for n in names)  # re-scoring changes the answer


@pytest.mark.parametrize("name", ["magnitude", "random", "snip", "grasp", "synflow"])
def test_every_criterion_prunes_at_init_to_the_target(name):
    model = ConvNet()
    weights = select_prunable(model, exclude_first=True)
    x = torch.randn(8, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(8) % 4
    kwargs = {"batch": (x, y), "generator": torch.Generator().manual_seed(0), "input_shape": (3, 6, 6)}
    masks = prune_at_init(name, model, weights, 0.2, iterations=5, **kwargs)
    assert list(masks) == list(weights)
    total = sum(w.numel() for w in weights.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * total)
    scores = compute_scores(name, model, weights, **kwargs)
    assert all(scores[n].shape == w.shape for n, w in weights.items())
    if name != "synflow":
        erk_masks = prune_at_init(name, model, weights, 0.2, "erk", **kwargs)
        assert overall_density(erk_masks) == pytest.approx(0.2, abs=0.01)


def test_criterion_errors():
    model = ConvNet()
    names = list(select_prunable(model))
    assert CRITERIA.names() == ["grasp", "magnitude", "random", "snip", "synflow"]
    with pytest.raises(TicketlabError, match="choose one of: grasp, magnitude"):
        compute_scores("obd", model, names)
    with pytest.raises(TicketlabError, match="batch"):
        compute_scores("snip", model, names)
    with pytest.raises(TicketlabError, match="input_shape"):
        prune_at_init("synflow", model, names, 0.1)
    with pytest.raises(TicketlabError, match="budget='global'"):
        prune_at_init("synflow", model, names, 0.1, "erk", input_shape=(3, 6, 6))
    with pytest.raises(TicketlabError, match="no parameter conv9.weight"):
        compute_scores("magnitude", model, ["conv9.weight"])
