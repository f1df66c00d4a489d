"""Why `bench` (1.65x) and widths_pair.py (1.39x) seemed to disagree on ResNet-20's keep-streams widths:
the study's compacted ticket, the same shapes with random values and widths_pair.py's rows-first compaction
of a random init, timed in turns (CPU, batch 64). Ran against the store of
resnet20_r1_keepstreams_15ep_seed0.sh (/work/s9 then)."""
import copy
import json
import sys

import torch

from ticketlab.compact import compact
from ticketlab.models import build_model
from ticketlab.sparsity import select_prunable
from ticketlab.speed import measure
from ticketlab.tickets.structured import Structure
from ticketlab.tickets.ticketfile import load_ticket

torch.set_num_threads(2)
t = load_ticket(open("/work/s9/ticket.path").read().strip().replace("S/", "/work/s9/S/", 1))
trained_small = compact(t.model, t.masks).eval()
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


def conv_shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.dim() == 4}


rand_small = first_rows(rand, list(select_prunable(rand, keep_streams=True)), 0.25)
shuffled = copy.deepcopy(trained_small)  # same shapes as the trained ticket, fresh random values
with torch.no_grad():
    for p in shuffled.parameters():
        p.copy_(torch.randn_like(p) * p.std().clamp_min(1e-3))
    for name, b in shuffled.named_buffers():
        if "running_var" in name:
            b.fill_(1.0)
        elif "running_mean" in name:
            b.zero_()
print(conv_shapes(trained_small) == conv_shapes(rand_small), file=sys.stderr)
variants = {"dense_trained": t.model.eval(), "dense_random": rand, "small_trained": trained_small,
            "small_random_rows": rand_small, "small_trained_shapes_random_values": shuffled}
timings = measure(variants, (3, 32, 32), (64,), repeats=7)
print(json.dumps({x.variant: round(x.latency_ms, 2) for x in timings}))
