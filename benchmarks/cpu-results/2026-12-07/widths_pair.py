"""ResNet-20 at about a quarter of the FLOPs, two ways, timed in turns (CPU, batch 64): half of every width
(streams and blocks, 8/16/32) against full streams with a quarter of each block's inner channels (4/8/16,
what `find --keep-streams --scope layerwise --fraction 0.75` keeps). Speed does not depend on the weights'
values, so both are the rows-first compaction of one initialisation."""
import json
import sys

import torch

from ticketlab.compact import compact
from ticketlab.models import build_model
from ticketlab.sparsity import select_prunable
from ticketlab.speed import forward_flops, measure
from ticketlab.tickets.structured import Structure

torch.set_num_threads(2)
model = build_model("cifar_resnet_20").eval()


def first_rows(names, share):
    params = dict(model.named_parameters())
    masks = {}
    for n in names:
        m = torch.zeros_like(params[n], dtype=torch.bool)
        if params[n].dim() == 4:
            m[: round(share * m.shape[0])] = True
        else:
            m[:] = True  # the classifier keeps its weights
        masks[n] = m
    return compact(model, Structure("channel", model, names).complete(masks)).eval()


variants = {"dense": model,
            "half_every_width": first_rows(list(select_prunable(model)), 0.5),
            "full_streams_quarter_inner": first_rows(list(select_prunable(model, keep_streams=True)), 0.25)}
flops = {k: forward_flops(v, (3, 32, 32)) for k, v in variants.items()}
params = {k: sum(p.numel() for p in v.parameters()) for k, v in variants.items()}
timings = measure(variants, (3, 32, 32), (64,), repeats=int(sys.argv[1]) if len(sys.argv) > 1 else 7)
print(json.dumps({"flops": flops, "parameters": params,
                  "speedup": {t.variant: round(t.ratio, 3) for t in timings},
                  "ms": {t.variant: round(t.latency_ms, 3) for t in timings}}))
