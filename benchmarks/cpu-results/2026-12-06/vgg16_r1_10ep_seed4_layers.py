"""Per-module CPU forward times of a channel ticket, dense against compacted (twenty-ninth session; output:
vgg16_r1_10ep_seed4_layers.txt). Reformatted for the linter after the run; the same logic."""
import statistics
import sys
import time

import torch
from torch import nn

from ticketlab.compact import compact
from ticketlab.tickets.ticketfile import load_ticket

torch.set_num_threads(2)
t = load_ticket(sys.argv[1])
dense = t.model.eval()
small = compact(t.model, t.masks).eval()
x = torch.randn(64, 3, 32, 32).to(memory_format=torch.channels_last)
dense = dense.to(memory_format=torch.channels_last)
small = small.to(memory_format=torch.channels_last)


def per_layer(model):
    """Median milliseconds per leaf module over 7 forwards (after 3 warm-up), timed by hooks."""
    times, starts, hooks = {}, {}, []
    for n, m in model.named_modules():
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_pre_hook(
                lambda mod, inp, n=n: starts.__setitem__(n, time.perf_counter())))
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, n=n: times.setdefault(n, []).append(time.perf_counter() - starts[n])))
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        times.clear()
        for _ in range(7):
            model(x)
    for h in hooks:
        h.remove()
    return {n: statistics.median(v) * 1000 for n, v in times.items()}


for _ in range(2):
    d = per_layer(dense)
    s = per_layer(small)
    tot_d, tot_s = sum(d.values()), sum(s.values())
    print(f"total dense {tot_d:.1f} ms compacted {tot_s:.1f} ms ratio {tot_d / tot_s:.2f}")
by = {}
for n in d:
    kind = type(dict(dense.named_modules())[n]).__name__
    by.setdefault(kind, [0, 0])
    by[kind][0] += d[n]
    by[kind][1] += s.get(n, 0)
for k, (a, b) in by.items():
    print(f"{k:12s} dense {a:7.2f} compacted {b:7.2f} ratio {a / max(b, 1e-9):.2f}")
dm, sm = dict(dense.named_modules()), dict(small.named_modules())
for n in d:
    m = dm[n]
    if isinstance(m, nn.Conv2d):
        c = sm[n]
        flops = (m.in_channels * m.out_channels) / (c.in_channels * c.out_channels)
        print(f"{n:20s} {m.in_channels:4d}->{m.out_channels:4d}  {c.in_channels:4d}->{c.out_channels:4d}  "
              f"dense {d[n]:6.2f} comp {s[n]:6.2f}  speed {d[n] / s[n]:.2f} flops-ratio {flops:.2f}")
