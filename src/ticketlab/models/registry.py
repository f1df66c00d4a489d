"""The model table: each name maps to a builder and the training recipe it was published with.

The trainer reads a model's recipe as its defaults, so `ticketlab train --model cifar_resnet_20` trains
with the hyperparameters of the paper that introduced it unless the user overrides them.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.registry import Registry

Builder = Callable[..., nn.Module]

# Every builder takes these three; anything else it accepts is a model option (**kwargs of build_model).
SHAPE_ARGS = ("num_classes", "in_channels", "image_size")

# Hyperparameters a recipe may suggest; the trainer understands exactly these.
RECIPE_KEYS = frozenset(
    {
        "epochs",
        "batch_size",
        "drop_last",
        "optimizer",
        "lr",
        "momentum",
        "nesterov",
        "weight_decay",
        "schedule",
        "milestones",
        "gamma",
        "warmup_epochs",
        "lr_start",
        "lr_end",
        "bias_lr_scale",
        "lookahead_every",
        "label_smoothing",
        "ema_decay",
        "ema_every",
        "tta",
    }
)


# Augmentation a model's recipe may ask for on colour images, in place of the standard CIFAR crop
# (pad 4, zero fill) and random flip: the fields of ticketlab.data.augment.Augment.
AUGMENT_KEYS = frozenset({"crop_padding", "reflect", "flip", "alternate_flip"})


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: how to build it and how it is usually trained."""

    builder: Builder
    recipe: Mapping[str, Any]
    augment: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    revision: int = 0


MODELS: Registry[ModelEntry] = Registry("model")


def register_model(
    name: str, recipe: dict[str, Any] | None = None, augment: dict[str, Any] | None = None, revision: int = 0
) -> Callable[[Builder], Builder]:
    """Decorator adding `builder(num_classes, in_channels, image_size, **options)` under `name`.

    Raise `revision` when a change to the builder changes what a run computes (an init, a layer): it
    enters run ids, so a store retrains such runs instead of reusing ones of the old network, and
    ticket files of another revision are refused rather than loaded into the wrong network."""
    if not isinstance(name, str) or not name:
        raise TicketlabError(f"a model's name must be a non-empty string, got {name!r}")
    recipe, augment = dict(recipe or {}), dict(augment or {})
    for what, given, keys in (("recipe", recipe, RECIPE_KEYS), ("augment", augment, AUGMENT_KEYS)):
        unknown = sorted(set(given) - keys)
        if unknown:
            raise TicketlabError(
                f"{what} for model {name!r} has unknown key(s) {', '.join(unknown)}; "
                f"use only: {', '.join(sorted(keys))}"
            )

    def decorate(builder: Builder) -> Builder:
        if name in MODELS:
            raise TicketlabError(f"model {name!r} is already registered; register yours under another name")
        missing = [arg for arg in SHAPE_ARGS if arg not in inspect.signature(builder).parameters]
        if missing:
            raise TicketlabError(
                f"model builder for {name!r} must accept num_classes, in_channels and image_size; "
                f"add the missing parameter(s): {', '.join(missing)}"
            )
        MODELS.register(name)(ModelEntry(builder, MappingProxyType(recipe), MappingProxyType(augment), revision))
        return builder

    return decorate


def model_revision(name: str) -> str:
    """The revision part of a registered model's identity: "" for the first, "revision N" after
    changes that alter its numbers (unknown names: "", the build names them)."""
    revision = MODELS.get(name).revision if name in MODELS else 0
    return f"revision {revision}" if revision else ""


def model_options(name: str) -> dict[str, Any] | None:
    """The options `--model-arg` sets for `name`, with their defaults (None: accepts anything)."""
    builder = MODELS.get(name).builder
    names = _option_names(builder)
    if names is None:
        return None
    params = inspect.signature(builder).parameters
    return {n: params[n].default for n in names}


def canonical_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` as a run's identity holds them, so equal settings hash equally: lists as tuples, an int
    given for a float option as that float, and options equal to the builder's default left out."""
    canonical = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    if name not in MODELS or _option_names(MODELS.get(name).builder) is None:
        return canonical
    params = inspect.signature(MODELS.get(name).builder).parameters
    for key, value in list(canonical.items()):
        default = params[key].default if key in params else inspect.Parameter.empty
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            canonical[key] = value = float(value)
        try:
            same = type(value) is type(default) and bool(value == default)
        except (TypeError, ValueError, RuntimeError):  # array-like values compare elementwise
            same = False
        if same:
            del canonical[key]
    return canonical


def _option_names(builder: Builder) -> list[str] | None:
    """Names of the builder's options, or None when it takes **kwargs (anything goes)."""
    options = []
    for param in inspect.signature(builder).parameters.values():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            return None
        if param.name not in SHAPE_ARGS and param.kind is not inspect.Parameter.VAR_POSITIONAL:
            options.append(param.name)
    return options


def build_model(
    name: str, *, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs: Any
) -> nn.Module:
    """Build a registered model for `in_channels` x `image_size` x `image_size` inputs."""
    entry = MODELS.get(name)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels), ("image_size", image_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TicketlabError(f"{arg} must be a positive integer, got {value!r}")
    options = _option_names(entry.builder)
    if options is not None:
        unknown = sorted(set(kwargs) - set(options))
        if unknown:
            accepted = ", ".join(options) if options else "none"
            raise TicketlabError(
                f"model {name!r} has no option(s) {', '.join(unknown)}; its options are: {accepted}"
            )
        params = inspect.signature(entry.builder).parameters
        missing = [n for n in options if params[n].default is inspect.Parameter.empty and n not in kwargs]
        if missing:
            raise TicketlabError(f"model {name!r} needs option(s) {', '.join(missing)}; give them as "
                                 f"{', '.join(f'--model-arg {n}=...' for n in missing)} (model_options= in Python)")
    model = entry.builder(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
    if not isinstance(model, nn.Module):  # a user's builder: caught here, not as an AttributeError in training
        raise TicketlabError(f"the builder of model {name!r} returned {type(model).__name__}, not an nn.Module; "
                             "make it return the network it builds")
    return model


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return MODELS.names()


def model_recipe(name: str) -> dict[str, Any]:
    """A fresh copy of the model's suggested training hyperparameters (may be empty)."""
    return dict(MODELS.get(name).recipe)


def model_augment(name: str) -> dict[str, Any]:
    """The augmentation the model's recipe asks for on colour images (empty: the standard one)."""
    return dict(MODELS.get(name).augment)
