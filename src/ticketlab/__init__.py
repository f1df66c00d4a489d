"""ticketlab: find, train, check and ship sparse networks (lottery tickets) for image classification."""

from ticketlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ticketlab.data import ImageDataset, load_dataset, register_dataset
from ticketlab.errors import TicketlabError
from ticketlab.models import build_model, list_models, register_model
from ticketlab.store import RunStore
from ticketlab.tickets import TicketConfig, find_ticket
from ticketlab.train import Hook, Trainer, train

__version__ = "0.1.0"

__all__ = [
    "DataConfig", "Hook", "ImageDataset", "ModelConfig", "RunConfig", "RunStore", "TicketConfig",
    "TicketlabError", "TrainConfig", "Trainer", "build_model", "find_ticket", "list_models", "load_dataset",
    "register_dataset", "register_model", "train",
]
