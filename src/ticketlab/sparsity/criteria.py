"""Pruning criteria: a score per weight, higher = more important = kept.

The pruning-at-initialisation criteria score a model before training:
SNIP and GraSP on one batch of data, SynFlow on no data at all. `prune_at_init` turns any of them
into masks; SynFlow prunes iteratively with its own global schedule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.registry import Registry
from ticketlab.sparsity.budgets import check_density
from ticketlab.sparsity.masks import Masks, global_masks, masks_from_scores

Scores = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]


def magnitude(weights: Mapping[str, torch.Tensor]) -> Scores:
    """|w|: the IMP criterion."""
    return {name: w.detach().abs() for name, w in weights.items()}


def random_scores(weights: Mapping[str, torch.Tensor], generator: torch.Generator) -> Scores:
    """Uniform random scores: random pruning (with a budget giving the per-layer densities)."""
    return {
        name: torch.rand(w.shape, generator=generator, device=generator.device).to(w.device)
        for name, w in weights.items()
    }


def _weights(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    names = list(names)
    unknown = [n for n in names if n not in params]
    if unknown:
        raise TicketlabError(
            f"model has no parameter {', '.join(unknown[:5])}; name the weights to score as "
            "ticketlab.sparsity.select_prunable(model) does"
        )
    return {n: params[n] for n in names}


@contextmanager
def _probe(model: nn.Module, weights: Iterable[nn.Parameter]) -> Iterator[None]:
    """Train-mode passes that leave no trace on the model or the caller's random state.

    SNIP and GraSP score the network as it trains (BatchNorm on batch statistics), but a score
    must not move BatchNorm running statistics, module modes, `.grad` (we use autograd.grad) or
    the RNG that dropout would draw from.
    """
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.clone()) for b in model.buffers()]
    flags = [(w, w.requires_grad) for w in weights]
    cuda = sorted({p.device.index for p in model.parameters() if p.is_cuda})
    try:
        with torch.random.fork_rng(devices=cuda):
            model.train()
            for w, _ in flags:
                w.requires_grad_(True)
            yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for m, mode in modes:
            m.train(mode)
        for w, flag in flags:
            w.requires_grad_(flag)


def snip(model: nn.Module, names: Iterable[str], inputs: torch.Tensor, targets: torch.Tensor) -> Scores:
    """SNIP connection sensitivity |∂L/∂w ⊙ w| (cross-entropy on one batch, train mode)."""
    weights = _weights(model, names)
    with _probe(model, weights.values()):
        loss = F.cross_entropy(model(inputs), targets)
        grads = torch.autograd.grad(loss, list(weights.values()))
    return {name: (g * w).detach().abs() for (name, w), g in zip(weights.items(), grads)}


def grasp(
    model: nn.Module, names: Iterable[str], inputs: torch.Tensor, targets: torch.Tensor, *, temperature: float = 200.0
) -> Scores:
    """GraSP, returned as w ⊙ Hg so that higher = kept.

    The paper scores S(−w) = −w ⊙ Hg and removes the weights with the HIGHEST S (pruning them
    reduces gradient flow least, or increases it); its negation w ⊙ Hg fits our keep-the-highest
    convention and gives the same masks. H is the Hessian of the loss over all scored weights
    (cross-layer terms included), g its gradient; the logits are divided by `temperature`
    (T = 200 in the paper) so the softmax is not saturated at initialisation.
    """
    weights = _weights(model, names)
    params = list(weights.values())
    with _probe(model, params):
        loss = F.cross_entropy(model(inputs) / temperature, targets)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        # ∂/∂w (g · stopgrad(g)) = H g
        hg = torch.autograd.grad(sum((g * g.detach()).sum() for g in grads), params)
    return {name: (w * h).detach() for (name, w), h in zip(weights.items(), hg)}


def _linearized(model: nn.Module) -> nn.Module:
    """A float64 eval-mode copy with every parameter and buffer replaced by its absolute value.

    SynFlow's R = 1ᵀ(Π|W|)1 is then the network's output on an all-ones input (ReLUs and
    max-pools see only non-negative values). float64 because R is a product over all layers and
    overflows float32 on deep networks.
    """
    net = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for t in [*net.parameters(), *net.buffers()]:
            if t.is_floating_point():
                t.abs_()
    return net


def _synflow_round(
    net: nn.Module,
    names: list[str],
    abs_weights: Mapping[str, torch.Tensor],
    masks: Masks | None,
    input_shape: tuple[int, ...],
) -> Scores:
    params = _weights(net, names)
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(abs_weights[name] if masks is None else abs_weights[name] * masks[name].to(p.device))
            p.requires_grad_(True)
    x = torch.ones((1, *input_shape), dtype=torch.float64, device=next(iter(params.values())).device)
    grads = torch.autograd.grad(net(x).sum(), list(params.values()))
    return {name: (g * p).detach().abs() for (name, p), g in zip(params.items(), grads)}


def synflow_scores(
    model: nn.Module, names: Iterable[str], input_shape: tuple[int, ...], masks: Masks | None = None
) -> Scores:
    """One round of SynFlow: |∂R/∂θ ⊙ θ| on the linearised network (see `_linearized`).

    `input_shape` is the shape of ONE example (e.g. (3, 32, 32)); pruned weights (`masks`) are
    zero and score 0. Scores are float64. The model itself is not modified.
    """
    names = list(names)
    net = _linearized(model)
    abs_weights = {n: p.detach().clone() for n, p in _weights(net, names).items()}
    return _synflow_round(net, names, abs_weights, masks, tuple(input_shape))


def synflow(
    model: nn.Module, names: Iterable[str], input_shape: tuple[int, ...], *, density: float, iterations: int = 100
) -> Masks:
    """Iterative SynFlow (Tanaka et al. 2020): round k = 1..n re-scores the pruned network and
    prunes globally to density^(k/n), so the last round meets `density` exactly.

    Re-scoring after each small step is what avoids layer collapse; one round would be SNIP-like.
    """
    check_density(density)
    if iterations < 1:
        raise TicketlabError(f"synflow needs iterations >= 1, got {iterations}")
    names = list(names)
    net = _linearized(model)
    abs_weights = {n: p.detach().clone() for n, p in _weights(net, names).items()}
    masks: Masks | None = None
    for k in range(1, iterations + 1):
        scores = _synflow_round(net, names, abs_weights, masks, tuple(input_shape))
        masks = global_masks(scores, density ** (k / iterations), current=masks)
    return masks


# ---- one entry point per criterion ----------------------------------------------------------

Criterion = Callable[..., Scores]  # (model, names, *, batch, generator, input_shape) -> scores
CRITERIA: Registry[Criterion] = Registry("pruning criterion")


def _need(value, what: str, criterion: str):
    if value is None:
        raise TicketlabError(f"pruning criterion {criterion!r} needs {what}")
    return value


@CRITERIA.register("magnitude")
def _magnitude(model, names, *, batch, generator, input_shape) -> Scores:
    return magnitude(_weights(model, names))


@CRITERIA.register("random")
def _random(model, names, *, batch, generator, input_shape) -> Scores:
    return random_scores(_weights(model, names), _need(generator, "a torch.Generator (generator=...)", "random"))


@CRITERIA.register("snip")
def _snip(model, names, *, batch, generator, input_shape) -> Scores:
    return snip(model, names, *_need(batch, "one batch of training data, batch=(inputs, targets)", "snip"))


@CRITERIA.register("grasp")
def _grasp(model, names, *, batch, generator, input_shape) -> Scores:
    return grasp(model, names, *_need(batch, "one batch of training data, batch=(inputs, targets)", "grasp"))


@CRITERIA.register("synflow")
def _synflow(model, names, *, batch, generator, input_shape) -> Scores:
    return synflow_scores(model, names, _need(input_shape, "the shape of one input, input_shape=(C, H, W)", "synflow"))


def compute_scores(
    name: str,
    model: nn.Module,
    names: Iterable[str],
    *,
    batch: Batch | None = None,
    generator: torch.Generator | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> Scores:
    """Scores of the named criterion; each uses only what it needs (SynFlow: one round)."""
    return CRITERIA.get(name)(model, list(names), batch=batch, generator=generator, input_shape=input_shape)


def prune_at_init(
    name: str,
    model: nn.Module,
    names: Iterable[str],
    density: float,
    budget: str = "global",
    *,
    batch: Batch | None = None,
    generator: torch.Generator | None = None,
    input_shape: tuple[int, ...] | None = None,
    iterations: int = 100,
) -> Masks:
    """One-shot masks at `density` from criterion `name` under layer budget `budget`.

    SynFlow is the exception: it runs its iterative global schedule (`iterations` rounds), so it
    accepts only budget="global".
    """
    names = list(names)
    if name == "synflow":
        if budget != "global":
            raise TicketlabError(
                f"synflow prunes with its own iterative global schedule; use budget='global', not {budget!r}"
            )
        shape = _need(input_shape, "the shape of one input, input_shape=(C, H, W)", "synflow")
        return synflow(model, names, shape, density=density, iterations=iterations)
    scores = compute_scores(name, model, names, batch=batch, generator=generator, input_shape=input_shape)
    return masks_from_scores(scores, density, budget)
