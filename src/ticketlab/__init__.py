"""ticketlab: find, train, check and ship sparse networks (lottery tickets) for image classification.

The public names load on first use (PEP 562), so `ticketlab --help` and an early Ctrl-C do not
wait for torch to import.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_HOMES = {
    "DataConfig": "ticketlab.config", "ModelConfig": "ticketlab.config", "RunConfig": "ticketlab.config",
    "TrainConfig": "ticketlab.config", "TicketlabError": "ticketlab.errors",
    "ImageDataset": "ticketlab.data", "load_dataset": "ticketlab.data", "register_dataset": "ticketlab.data",
    "build_model": "ticketlab.models", "list_models": "ticketlab.models", "register_model": "ticketlab.models",
    "RunStore": "ticketlab.store", "TicketConfig": "ticketlab.tickets", "find_ticket": "ticketlab.tickets",
    "Hook": "ticketlab.train", "Trainer": "ticketlab.train",
}

__all__ = [
    "DataConfig", "Hook", "ImageDataset", "ModelConfig", "RunConfig", "RunStore", "TicketConfig",
    "TicketlabError", "TrainConfig", "Trainer", "build_model", "find_ticket", "list_models", "load_dataset",
    "register_dataset", "register_model", "train",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'ticketlab' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """`ticketlab.train` is the function, also once the `ticketlab.train` subpackage is imported:
    the import system then binds the subpackage to this name, and that binding is ignored."""

    @property
    def train(self) -> Any:
        from ticketlab.train import train

        return train

    @train.setter
    def train(self, value: Any) -> None:
        if not isinstance(value, types.ModuleType):
            raise AttributeError("ticketlab.train is the training function; it cannot be replaced")


sys.modules[__name__].__class__ = _Package


if TYPE_CHECKING:
    from ticketlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from ticketlab.data import ImageDataset, load_dataset, register_dataset
    from ticketlab.errors import TicketlabError
    from ticketlab.models import build_model, list_models, register_model
    from ticketlab.store import RunStore
    from ticketlab.tickets import TicketConfig, find_ticket
    from ticketlab.train import Hook, Trainer, train
