"""widths_pair.py's three networks timed in a given order (CPU, batch 64): does the order of the turns
move the keep-streams ratio? Usage: python resnet20_keepstreams_timing_order.py dense,half,ks"""
import json
import sys

import torch

from ticketlab.compact import compact
from ticketlab.models import build_model
from ticketlab.sparsity import select_prunable
from ticketlab.speed import measure
from ticketlab.tickets.structured import Structure

torch.set_num_threads(2)
rand = build_model("cifar_resnet_20").eval()


def first_rows(model, names, share):
    params = dict(model.named_parameters())
    masks = {}
    for n in names:
        m = torch.zeros_like(params[n], dtype=torch.bool)
        if params[n].dim() == 4:
            m[: round(share * m.shape[0])] = True
        else:
            m[:] = True
        masks[n] = m
    return compact(model, Structure("channel", model, names).complete(masks)).eval()


v = {"dense": rand, "half": first_rows(rand, list(select_prunable(rand)), 0.5),
     "ks": first_rows(rand, list(select_prunable(rand, keep_streams=True)), 0.25)}
order = sys.argv[1].split(",")
timings = measure({k: v[k] for k in order}, (3, 32, 32), (64,), repeats=7)
d = {x.variant: x.latency_ms for x in timings}
print(sys.argv[1], json.dumps({k: round(d["dense"] / d[k], 3) for k in d}))
