"""Structured tickets that really run faster: channel groups, physical compaction, and export.

    masks = complete_channel_masks(model, channel_masks)   # train with these
    small = compact(model, masks)                          # same function, fewer channels
    save_model("ticket.safetensors", small, input_shape=(1, 3, 32, 32))
    small = load_model("ticket.safetensors")               # no architecture code, no pickle
"""

from ticketlab.compact.channels import (
    ChannelGroup,
    channel_groups,
    complete_channel_masks,
    register_channel_plan,
    tied_layers,
)
from ticketlab.compact.compaction import Kept, check_compacts, compact, compaction_report, kept_entries
from ticketlab.compact.export import export_onnx, load_model, save_model

__all__ = [
    "ChannelGroup", "Kept", "channel_groups", "check_compacts", "compact", "compaction_report",
    "complete_channel_masks", "export_onnx", "kept_entries", "load_model", "register_channel_plan", "save_model",
    "tied_layers",
]
