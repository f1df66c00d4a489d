"""Seed 4's r=0.1 ticket with its channel masks changed to seed 3's compacted widths (one channel
here or there), to bench both in turns: whether a ticket's speed-up differs by its widths or by the machine."""
import json
import sys

import torch

from ticketlab.compact import complete_channel_masks
from ticketlab.sparsity import apply_masks
from ticketlab.tickets.ticketfile import load_ticket, save_ticket

src, widths_from, out = sys.argv[1], sys.argv[2], sys.argv[3]
ticket = load_ticket(src)
groups = json.load(open(widths_from))["compaction"]["groups"]
masks = {k: v.clone() for k, v in ticket.masks.items()}
for g in groups:
    (name,) = g["producers"]
    target = g["channels"]["after"]
    m = masks[name]
    alive = m.flatten(1).any(1)
    have = int(alive.sum())
    if target > have:  # switch on the first dead channels (zero weights: the speed depends on shapes only)
        for c in torch.nonzero(~alive).flatten()[: target - have]:
            m[c] = True
    elif target < have:  # switch off the last live channels
        for c in torch.nonzero(alive).flatten()[target - have:]:
            m[c] = False
    print(name, have, "->", int(m.flatten(1).any(1).sum()))
names = [g["producers"][0] for g in groups]
for name, nxt in zip(names, names[1:]):  # the next layer reads every kept channel of this one
    kept, rows = masks[name].flatten(1).any(1), masks[nxt].flatten(1).any(1)
    masks[nxt][rows.nonzero()[:, None], kept.nonzero()[None, :, 0]] = True
masks = complete_channel_masks(ticket.model, masks)  # BatchNorm entries of removed channels too
with torch.no_grad():
    apply_masks(ticket.model, masks)
info = ticket.info
save_ticket(out, ticket.model, masks, model_name=info["model"], model_options=info["options"],
            num_classes=info["num_classes"], in_channels=info["in_channels"], image_size=info["image_size"])
