"""VGG-16 (revision 1) compacted to fixed widths, shapes only, timed against dense in turns (CPU, batch 64).
Widths: seed 4's r = 0.1 refill+ ticket, exact and rounded to the nearest multiple of 16 and of 8.
Speed does not depend on the weights' values, so each is the first-rows compaction of one initialisation."""
import json
import sys

import torch

from ticketlab.compact import compact
from ticketlab.models import build_model
from ticketlab.sparsity import select_prunable
from ticketlab.speed import forward_flops, measure
from ticketlab.tickets.structured import Structure

torch.set_num_threads(2)
torch.manual_seed(0)
model = build_model("cifar_vgg_16").eval()
WIDTHS = {
    "exact": [60, 51, 103, 94, 183, 156, 154, 293, 219, 216, 213, 212, 213],
    "m16": [64, 48, 96, 96, 176, 160, 160, 288, 224, 224, 208, 208, 208],
    "m8": [64, 48, 104, 96, 184, 160, 152, 296, 216, 216, 216, 216, 216],
}


def first_rows(widths):
    params = dict(model.named_parameters())
    masks, convs = {}, iter(widths)
    for n in select_prunable(model):
        m = torch.zeros_like(params[n], dtype=torch.bool)
        if params[n].dim() == 4:
            m[: next(convs)] = True
        else:
            m[:] = True
        masks[n] = m
    return compact(model, Structure("channel", model, list(masks)).complete(masks)).eval()


variants = {"dense": model, **{k: first_rows(w) for k, w in WIDTHS.items()}}
flops = {k: forward_flops(v, (3, 32, 32)) for k, v in variants.items()}
timings = measure(variants, (3, 32, 32), (64,), repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 7)
print(json.dumps({"flops_share": {k: round(f / flops["dense"], 4) for k, f in flops.items()},
                  "speedup": {t.variant: round(t.ratio, 3) for t in timings},
                  "ms": {t.variant: round(t.latency_ms, 2) for t in timings}}))
