"""PrAC sets: find tickets on the training examples that matter (Zhang et al. 2021, "Less data is more").

Zhang et al. 2021 ("Efficient Lottery Ticket Finding: Less Data is More") keep two kinds of
examples and run IMP on them alone, with epochs and lr milestones scaled by |PrAC| / |train|:
  * hard to memorise: forgotten at least once (correct -> incorrect between epochs) or never
    learned while the dense network trained (its per-example records);
  * easy to forget during pruning, from level 1 on: examples whose prediction differs between
    the dense network and the freshly pruned one.
The first kind depends only on the data and the dense run, so a saved set transfers to other
architectures. Indices count the training examples left after the validation split.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ticketlab.errors import TicketlabError
from ticketlab.store.files import write_tensors
from ticketlab.train.evaluate import predict
from ticketlab.train.records import forgetting_events, hard_to_memorise, never_learned

KEY = "ticketlab.prac"


@dataclass
class PracSet:
    hard: torch.Tensor  # bool [N]: hard-to-memorise examples of the training set
    info: dict[str, Any]  # dataset identity, validation split, source run, counts

    @property
    def fraction(self) -> float:
        return float(self.hard.float().mean())


def from_records(correct: torch.Tensor, seen: torch.Tensor, info: dict[str, Any]) -> PracSet:
    hard = hard_to_memorise(correct, seen)
    counts = {"examples": int(hard.numel()), "hard": int(hard.sum()),
              "forgotten": int((forgetting_events(correct, seen) > 0).sum()),
              "never_learned": int(never_learned(correct, seen).sum())}
    return PracSet(hard.cpu(), {**info, **counts})


def predictions(model: nn.Module, x: torch.Tensor, mean, std) -> torch.Tensor:
    """Class predictions on un-augmented training images (what "prediction differs" compares)."""
    return predict(model, x, mean, std).argmax(1)


def prac_indices(hard: torch.Tensor, changed: torch.Tensor | None = None) -> torch.Tensor:
    """The PrAC set: hard-to-memorise examples, plus (from level 1) those pruning changed."""
    keep = hard.clone() if changed is None else hard | changed
    if not keep.any():
        raise TicketlabError("the PrAC set is empty: the dense network never forgot or failed any training example "
                             "and pruning changed no prediction; train on the full data (drop --data prac)")
    return keep.nonzero().flatten()


def save_prac(path: str | Path, prac: PracSet) -> Path:
    write_tensors(Path(path), {"hard": prac.hard}, metadata={KEY: json.dumps(prac.info, sort_keys=True)})
    return Path(path)


def load_prac(path: str | Path, n_train: int, expected: Mapping[str, Any] | None = None) -> PracSet:
    """A saved PrAC set, checked against the study's data: its indices mean nothing on another dataset,
    validation split or label noise. `expected` holds the study's values of the info keys a file records
    (a file predating a key is not checked on it)."""
    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"no PrAC file at {path}; compute one with `ticketlab prac --out {path}`")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            hard = f.get_tensor("hard") if "hard" in f.keys() else None
        info = json.loads(meta[KEY]) if KEY in meta else None
    except (SafetensorError, OSError, ValueError) as error:
        raise TicketlabError(f"{path} is not a readable PrAC file ({error}); "
                             "give a file from `ticketlab prac`") from None
    if not isinstance(info, dict) or hard is None:
        raise TicketlabError(f"{path} is not a PrAC file (no {KEY!r} metadata or 'hard' tensor); "
                             "give a file written by `ticketlab prac`")
    if hard.dtype != torch.bool or hard.dim() != 1 or hard.numel() != n_train:
        raise TicketlabError(f"the PrAC set in {path} covers {hard.numel()} examples (shape {tuple(hard.shape)}) but "
                             f"this study trains on {n_train}; compute it on the same dataset with the same "
                             "--validation split")
    for key, value in (expected or {}).items():
        if key in info and info[key] != value:
            raise TicketlabError(f"the PrAC set in {path} was computed with {key} {info[key]!r}, this study has "
                                 f"{value!r}; its indices would pick other examples, so compute it with the study's "
                                 "data settings (`ticketlab prac` with the same --dataset, --validation, --noise)")
    return PracSet(hard, info)
