#!/bin/bash
# Seed 4's exact-width r=0.1 ticket (trained) against the same ticket cut to its widths rounded to multiples of 16
# (near: the nearest multiple, down: the multiple below), shapes only: three rounds in turns, the machine idle.
# The width files are seed 4's bench JSON with each group's "after" count rounded; the cut is
# vgg16_r1_10ep_seed4_seed3_widths.py (it sets a ticket's channel masks to the widths of a bench JSON).
T=S/runs/13ff3b390b7e4e50/seed_4/level_1/ticket.safetensors
python3 - <<'PY'
import json
d = json.load(open("vgg16_r1_10ep_seed4_r0.1_bench_1.json"))
for mode, f in (("near", lambda a: max(16, 16 * round(a / 16))), ("down", lambda a: max(16, 16 * (a // 16)))):
    e = json.loads(json.dumps(d))
    for g in e["compaction"]["groups"]:
        g["channels"]["after"] = f(g["channels"]["after"])
    json.dump(e, open(f"widths_{mode}.json", "w"))
PY
for m in near down; do python vgg16_r1_10ep_seed4_seed3_widths.py $T widths_$m.json ticket_$m.safetensors; done
for r in 1 2 3; do for m in exact near16 down16; do
  f=$T; [ $m = near16 ] && f=ticket_near.safetensors; [ $m = down16 ] && f=ticket_down.safetensors
  ticketlab bench --model-file $f --batch-sizes 64 --repeats 7 --json > vgg16_r1_10ep_seed4_r0.1_rounded_${m}_$r.json
done; done
