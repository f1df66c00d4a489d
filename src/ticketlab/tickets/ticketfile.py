"""A ticket in one file: the architecture to rebuild, its trained weights and its masks.

One safetensors file holds `weight/<param>` and `mask/<param>` tensors; the metadata's
`ticketlab.ticket` entry is JSON naming the registered model, its options and the input shape,
so `ticketlab bench` and `compact` can rebuild the dense network without guessing anything. A
user's own module, which no name rebuilds, is stored as its torch.fx graph instead
(`ticketlab.compact.export`), read back from whitelists. Nothing in it is ever unpickled.
"""

from __future__ import annotations

import io
import json
import math
from contextlib import redirect_stderr
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ticketlab.errors import TicketlabError, first_line, state_mismatch
from ticketlab.models import MODELS, build_model
from ticketlab.sparsity import Masks, apply_masks
from ticketlab.store.files import write_tensors

KEY = "ticketlab.ticket"


@dataclass
class Ticket:
    model: nn.Module  # the dense architecture, ticket weights loaded and masks applied
    masks: Masks
    info: dict[str, Any]  # model, options, num_classes, in_channels, image_size, and what the saver added

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """One example's shape (C, H, W), as `measure` takes it; `save_model` and `export_onnx` take a
        batch's, (N, *input_shape)."""
        return _input_shape(self.info)


def _input_shape(info: dict[str, Any]) -> tuple[int, int, int]:
    """(C, H, W): `image_size` is the height, `image_width` is stored where the width differs (a user's
    module on non-square images; the registered models take squares)."""
    return (info["in_channels"], info["image_size"], info.get("image_width", info["image_size"]))


def save_ticket(
    path: str | Path,
    model: nn.Module,
    masks: Masks,
    *,
    model_name: str | None,
    model_options: dict[str, Any],
    num_classes: int,
    in_channels: int,
    image_size: int,
    image_width: int | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """`model_name` None: `model` is no registered model, so its graph is stored (an error says why
    when it cannot be: see `ticketlab.compact.save_model`). `image_width`: where it is not `image_size`."""
    info = {"model": model_name or type(model).__name__, "options": model_options, "num_classes": num_classes,
            "in_channels": in_channels, "image_size": image_size, **(extra or {})}
    if image_width is not None and image_width != image_size:
        info["image_width"] = image_width
    if model_name is not None and MODELS.get(model_name).revision:
        info["revision"] = MODELS.get(model_name).revision
    state = model.state_dict()
    if model_name is not None:
        stored_masks = masks
    else:
        from ticketlab.compact.export import describe_model

        info["architecture"], state = describe_model(model, (1, *_input_shape(info)))
        if getattr(model, "channels_last", True) is False:  # the class's opt-out, which its graph does not keep
            info["channels_last"] = False
        stored_masks = _graph_masks(model, masks, state)
    tensors = {f"weight/{k}": v for k, v in state.items()}
    tensors.update({f"mask/{k}": m.bool() for k, m in stored_masks.items()})
    write_tensors(Path(path), tensors, metadata={KEY: json.dumps(info, sort_keys=True)})
    return Path(path)


def _graph_masks(model: nn.Module, masks: Masks, state: dict[str, torch.Tensor]) -> Masks:
    """The masks under the names the traced graph holds its weights by: a layer the forward never calls
    is not in the graph (nor its mask), and a layer registered under two names is in it under the one
    the forward calls."""
    aliases: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), []).append(name)
    out = {}
    for name, mask in masks.items():
        names = aliases.get(id(model.get_parameter(name)), [name])
        out.update({alias: mask for alias in names if alias in state})
    return out


def load_ticket(path: str | Path) -> Ticket:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a ticket file" if path.is_dir() else "does not exist"
        raise TicketlabError(f"ticket file {path} {what}; `ticketlab find` writes one per level "
                             "(level_<L>/ticket.safetensors in the study folder)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise TicketlabError(f"{path} is not a readable safetensors file ({error}); pass a ticket file "
                             "written by `ticketlab find`") from None
    if KEY not in meta:
        raise TicketlabError(f"{path} is a safetensors file but not a ticket (no {KEY!r} metadata); "
                             "pass level_<L>/ticket.safetensors from a `ticketlab find` study")
    info = _ticket_info(path, meta[KEY])
    state = {k.removeprefix("weight/"): v for k, v in tensors.items() if k.startswith("weight/")}
    masks = {k.removeprefix("mask/"): v for k, v in tensors.items() if k.startswith("mask/")}
    if "architecture" in info:  # a user's module, rebuilt from its stored graph
        from ticketlab.compact.export import rebuild

        model = rebuild(info["architecture"], state, str(path))
        if info.get("channels_last", True) is False:
            model.channels_last = False
        _runs(path, info, model)
    else:
        _fits(path, info, state, _built(path, info, torch.device("meta")))  # checked before anything is allocated
        model = _built(path, info, torch.device("cpu"))
    _fits(path, info, state, model)
    for name, mask in masks.items():
        param = state.get(name)
        if mask.dtype != torch.bool or param is None or mask.shape != param.shape:
            raise TicketlabError(f"{path}: the mask of {name} is not a boolean mask of a weight of {info['model']}; "
                                 "the file is corrupt or hand-made, pass a ticket file written by `ticketlab find`")
    with torch.no_grad():
        apply_masks(model, masks)
    return Ticket(model, masks, info)


@torch.no_grad()
def _runs(path: Path, info: dict[str, Any], model: nn.Module) -> None:
    """A stored graph takes the input shape the metadata names: tools build inputs from that shape."""
    try:
        with redirect_stderr(io.StringIO()):  # a failing fx GraphModule prints its own traceback
            model.eval()(torch.zeros(1, *_input_shape(info)))
    except Exception as error:  # whatever the graph's operations raise on a wrong shape
        first = first_line(error)
        raise TicketlabError(f"{path}: its stored network does not take inputs of shape {_input_shape(info)} as its "
                             f"metadata says ({first}); the file is corrupt or hand-made, pass a ticket file written "
                             "by `ticketlab find`") from None


def _built(path: Path, info: dict[str, Any], device: torch.device) -> nn.Module:
    saved, current = info.get("revision", 0), MODELS.get(info["model"]).revision
    if saved != current:  # the same weights in a changed network would compute something else
        raise TicketlabError(f"{path} holds revision {saved} of {info['model']}, this ticketlab builds revision "
                             f"{current} (models/ says what changed); load it with the ticketlab version that "
                             "wrote it, or find the ticket again")
    try:
        with device:
            return build_model(info["model"], num_classes=info["num_classes"], in_channels=info["in_channels"],
                               image_size=info["image_size"], **info["options"])
    except (TypeError, ValueError, RuntimeError) as error:  # options a registered builder does not take
        raise TicketlabError(f"{path}: its metadata does not build {info['model']} ({error}); the file is corrupt "
                             "or was written by another ticketlab version") from None


def _fits(path: Path, info: dict[str, Any], state: dict[str, torch.Tensor], model: nn.Module) -> None:
    try:
        model.load_state_dict(state, assign=any(p.is_meta for p in model.parameters()))
    except RuntimeError as error:
        raise TicketlabError(f"{path}: the weights do not fit {info['model']} ({state_mismatch(error)}); the file "
                             "is corrupt or was written for other model options") from None


_FIELDS = {"model": str, "options": dict, "num_classes": int, "in_channels": int, "image_size": int}
_LARGEST = 1 << 14  # classes, channels or pixels a side: far beyond any classifier's, short of absurd allocations
_LARGEST_INPUT = 1 << 24  # values in one example (3 x 2364 x 2364): tools allocate batches of that shape


def _ticket_info(path: Path, text: str) -> dict[str, Any]:
    """The ticket's JSON metadata, checked field by field: the file may be damaged or hand-made."""
    try:
        info = json.loads(text)
    except ValueError as error:
        info = error
    wrong = [k for k, kind in _FIELDS.items() if not isinstance(info, dict) or not isinstance(info.get(k), kind)]
    if isinstance(info, dict) and "image_width" in info and not isinstance(info["image_width"], int):
        wrong.append("image_width")
    sizes = {k: info[k] for k in ("num_classes", "in_channels", "image_size", "image_width")
             if k not in wrong and isinstance(info, dict) and k in info}
    wrong += [k for k, v in sizes.items() if isinstance(v, bool) or not 0 < v <= _LARGEST]
    if not wrong and math.prod(_input_shape(info)) > _LARGEST_INPUT:
        wrong += ["in_channels and image size (together more than 2^24 values an example)"]
    if wrong:
        raise TicketlabError(f"{path} has damaged ticket metadata ({KEY!r} lacks a valid {', '.join(wrong)}); "
                             "pass a ticket file written by `ticketlab find`")
    return info
