"""Several networks of one architecture trained as one module, in one batched step.

A ticket study trains many small networks (seeds, baselines, levels) that leave a large GPU
idle one at a time. `StackedModels` stacks K networks' weights along a new first dimension and
runs their forward passes as one `torch.func.vmap` call, so the one Trainer trains all K in each
step: the loss is the sum of the K losses (each network gets exactly its own gradient), and SGD,
momentum, weight decay, masks and the lookahead all act element-wise, hence per network. All K
see the same batches, as a study's baselines do, unless the Trainer is given one seed per
network: then each gets its own batches (`forward_each`), as separate seeds would. Random draws in
the forward pass (dropout) are refused: batched, they would tie each network's numbers to its group.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, vmap

from ticketlab.errors import TicketlabError


def _signature(model: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(n, tuple(t.shape), t.dtype) for n, t in (*model.named_parameters(), *model.named_buffers())]


def _replace(module: nn.Module, name: str, value: torch.Tensor, parameter: bool) -> None:
    path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(path) if path else module
    if parameter:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(value, requires_grad=old.requires_grad)
    else:
        owner._buffers[leaf] = value


def _check_stackable(model: nn.Module) -> None:
    """What one batched call cannot hold, as a clear error rather than a failure deep inside vmap."""
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    if len(names) != len(dict(model.named_parameters())):
        raise TicketlabError("stacked training needs every parameter held under one name, and this network ties "
                             "weights (one parameter in two layers); train it without --stack")
    cumulative = [n for n, m in model.named_modules()
                  if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.momentum is None]
    if cumulative:
        raise TicketlabError(f"stacked training needs BatchNorm with a momentum, and {cumulative[0]} has "
                             "momentum=None (a cumulative average); set a momentum or train it without --stack")


def check_stackable(model: nn.Module, input_shape: tuple[int, ...]) -> None:
    """Refuse, before anything trains, a network that stacked training would refuse at its first step:
    one batched training-mode forward of two copies on a blank batch."""
    stacked = StackedModels([model, model]).train()
    with torch.no_grad():
        stacked(torch.zeros(2, *input_shape))


class StackedModels(nn.Module):
    """K networks as one: parameter `name` of shape S becomes shape [K, *S]; forward gives [K, B, ...].

    `body` is a copy of the first network holding the stacked tensors under their usual names
    (so `body.conv.weight` here); `stack_masks` turns per-network masks into masks of this module.
    """

    # Stacked conv weights are 5-D, which the channels-last format does not cover: the trainer
    # keeps this module in the default layout.
    channels_last = False

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        if not models:
            raise TicketlabError("StackedModels needs at least one network")
        first = _signature(models[0])
        for k, model in enumerate(models[1:], start=1):
            if _signature(model) != first:
                raise TicketlabError(
                    f"network {k} differs from network 0 in its parameters or buffers; only networks of one "
                    f"architecture (same names, shapes and dtypes) can be stacked"
                )
        _check_stackable(models[0])
        self.count = len(models)
        self.body = copy.deepcopy(models[0])
        for name, _ in models[0].named_parameters():
            _replace(self.body, name, torch.stack([m.get_parameter(name).detach() for m in models]), True)
        for name, _ in models[0].named_buffers():
            _replace(self.body, name, torch.stack([m.get_buffer(name) for m in models]), False)

    def forward(self, x: torch.Tensor, shared: bool = True) -> torch.Tensor:
        """Every network on the same batch x (or, shared=False, network k on x[k])."""
        params = dict(self.body.named_parameters())
        buffers = dict(self.body.named_buffers())

        def one(p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], inputs: torch.Tensor) -> torch.Tensor:
            return functional_call(self.body, (p, b), (inputs,))

        try:
            return vmap(one, in_dims=(0, 0, None if shared else 0), randomness="error")(params, buffers, x)
        except RuntimeError as error:
            if "randomness" not in str(error):
                raise
            # batched random draws (dropout) depend on the group's size and order: a network trained in one group
            # would not equal the same run trained in another, or alone
            raise TicketlabError(
                "stacked training cannot train networks that draw random numbers in their forward pass (dropout): "
                "each network's draws would depend on the others it is stacked with; train without --stack, or "
                "without dropout (--model-arg dropout=0)"
            ) from None

    def forward_each(self, x: torch.Tensor) -> torch.Tensor:
        """Network k on its own batch x[k]: inputs [K, B, ...] give outputs [K, B, ...]."""
        if x.shape[0] != self.count:
            raise TicketlabError(f"forward_each needs one batch per network, [{self.count}, B, ...]; "
                                 f"got shape {tuple(x.shape)}")
        return self.forward(x, shared=False)

    def training_hooks(self) -> list:
        """The networks' own hooks act on the stacked tensors (they are element-wise)."""
        own = getattr(self.body, "training_hooks", None)
        return list(own()) if callable(own) else []

    def unstack(self) -> list[nn.Module]:
        """The K networks as separate modules (copies)."""
        state = self.body.state_dict()
        out = []
        for k in range(self.count):
            model = copy.deepcopy(self.body)
            for name, p in self.body.named_parameters():
                _replace(model, name, p.detach()[k].clone(), True)
            for name, _ in self.body.named_buffers():
                _replace(model, name, state[name][k].clone(), False)
            out.append(model)
        return out


def stack_masks(masks: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Per-network masks (same names) as masks of a `StackedModels` (its parameters live in `body`)."""
    names = set(masks[0]) if masks else set()
    if not masks or any(set(m) != names for m in masks):
        raise TicketlabError("stack_masks needs one mask dict per network, all masking the same parameters")
    return {f"body.{name}": torch.stack([m[name] for m in masks]) for name in masks[0]}
