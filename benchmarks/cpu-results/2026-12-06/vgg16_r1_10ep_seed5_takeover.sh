#!/bin/bash
# Takes over from run.sh (stopped during seed 5's dense training so the rounded ticket is benched as soon as it
# exists): wait for the m16 study, record it, bench its ticket 3 times alone, then run.sh again (the exact-width
# study, reusing dense, then both tickets in turns).
PY="env PYTHONPATH=/work/s5/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main"
cd /work/s6
while kill -0 15160 2>/dev/null; do sleep 20; done
echo "rc=finished (run2.sh took over)" >> study_m16.err
SID=$(python3 -c "import json;print(json.load(open('study_m16.json'))['study_id'])") || exit 1
echo "S/runs/$SID/seed_5/level_1/ticket.safetensors" > ticket_m16.path
touch finished_m16
for i in 1 2 3; do
  $PY bench --model-file "$(cat ticket_m16.path)" --batch-sizes 64 --repeats 7 --json > alone_m16_$i.json 2> alone_m16_$i.err
done
./run.sh
