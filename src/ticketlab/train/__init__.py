"""The one training loop (Trainer), its hooks, and stored runs built on it."""

from ticketlab.train.dynamic import DynamicSparsity, initial_masks
from ticketlab.train.evaluate import evaluate
from ticketlab.train.hooks import Hook, MaskHook, Step
from ticketlab.train.optim import lr_factor, make_optimizer
from ticketlab.train.records import ExampleRecords, forgetting_events, hard_to_memorise, never_learned
from ticketlab.train.run import RunResult, recipe_config, train, train_run
from ticketlab.train.stacked import StackedModels, stack_masks
from ticketlab.train.stacked_run import Member, train_stacked
from ticketlab.train.trainer import Trainer, TrainResult

__all__ = [
    "DynamicSparsity", "ExampleRecords", "Hook", "MaskHook", "Member", "RunResult", "StackedModels", "Step",
    "Trainer", "TrainResult", "evaluate", "forgetting_events", "hard_to_memorise", "initial_masks", "lr_factor",
    "make_optimizer", "never_learned", "recipe_config", "stack_masks", "train", "train_run", "train_stacked",
]
