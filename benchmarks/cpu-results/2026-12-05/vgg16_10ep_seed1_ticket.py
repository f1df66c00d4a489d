"""A seed's level-1 widths as a ticket file (the study ships seed 0's only), for `ticketlab bench`.

python vgg16_10ep_seed1_ticket.py [SEED]   (default 1; writes /work/vgg10s<SEED>/seed<SEED>_ticket.safetensors)
"""
import os
import sys

from ticketlab.compact import complete_channel_masks
from ticketlab.models import build_model
from ticketlab.sparsity import load_masks
from ticketlab.tickets.ticketfile import save_ticket

seed = int(sys.argv[1]) if len(sys.argv) > 1 else 1
study = "/work/vgg10/store/runs/daff44b4bcab4c04"  # the 2-seed study; a second argument names another
if len(sys.argv) > 2:
    study = sys.argv[2]
masks = load_masks(f"{study}/seed_{seed}/level_1/masks.safetensors")
model = build_model("cifar_vgg_16", num_classes=10, in_channels=3, image_size=32)
kept = {name: int(m.flatten(1).any(1).sum()) for name, m in masks.items() if m.dim() == 4}
print("kept channels per conv:", list(kept.values()))
print("density:", sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values()))
masks = complete_channel_masks(model, masks)
os.makedirs(f"/work/vgg10s{seed}", exist_ok=True)
save_ticket(f"/work/vgg10s{seed}/seed{seed}_ticket.safetensors", model, masks, model_name="cifar_vgg_16",
            model_options={}, num_classes=10, in_channels=3, image_size=32)
m0 = load_masks(f"{study}/seed_0/level_1/masks.safetensors")
print("seed 0 kept:", [int(m.flatten(1).any(1).sum()) for n, m in m0.items() if m.dim() == 4])
