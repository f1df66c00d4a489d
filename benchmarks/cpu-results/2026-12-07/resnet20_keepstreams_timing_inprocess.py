"""Is the keep-streams ratio a state of the process? The study's ticket timed three times in one process, then
three times with fresh copies of dense and compacted networks; run four times (CPU, batch 64). Ran against the
store of resnet20_r1_keepstreams_15ep_seed0.sh (/work/s9 then)."""
import copy

import torch

from ticketlab.compact import compact
from ticketlab.speed import measure
from ticketlab.tickets.ticketfile import load_ticket

torch.set_num_threads(2)
t = load_ticket("/work/s9/" + open("/work/s9/ticket.path").read().strip())
dense = t.model.eval()
out = []
small = compact(dense, t.masks).eval()
for _ in range(3):
    tm = measure({"dense": dense, "c": small}, (3, 32, 32), (64,), repeats=7)
    out.append(("same", round(tm[1].ratio, 3), round(tm[0].latency_ms, 1), round(tm[1].latency_ms, 1)))
for _ in range(3):
    small2 = compact(copy.deepcopy(dense), t.masks).eval()
    dense2 = copy.deepcopy(dense)
    tm = measure({"dense": dense2, "c": small2}, (3, 32, 32), (64,), repeats=7)
    out.append(("fresh", round(tm[1].ratio, 3), round(tm[0].latency_ms, 1), round(tm[1].latency_ms, 1)))
print(out)
