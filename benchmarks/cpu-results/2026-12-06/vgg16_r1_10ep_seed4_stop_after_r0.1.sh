#!/bin/bash
# Stop run.sh once the r=0.1 ticket and its three bench rounds are done (no time this session for r=0),
# then bench the r=0.1 ticket five more rounds.
cd /work/s4
while [ ! -f finished_r0.1 ]; do sleep 5; done
pkill -f "/work/s4/run.sh"; sleep 1; pkill -f "refill-rate 0 "; sleep 3
PY="env PYTHONPATH=/work/s4/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main"
for i in 4 5 6 7 8; do
  $PY bench --model-file "$(cat ticket_r0.1.path)" --batch-sizes 64 --repeats 7 --json > bench_r0.1_$i.json 2> bench_r0.1_$i.err
done
echo done > stop.done
