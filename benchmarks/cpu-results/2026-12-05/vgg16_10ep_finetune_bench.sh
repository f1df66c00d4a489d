#!/usr/bin/env bash
# bench the study's seed-0 ticket at b64, 3 rounds, on the otherwise idle machine
set -eu
T=$(ls /work/vggft/store/runs/*/seed_0/level_1/ticket.safetensors | head -1)
for i in 1 2 3; do
  PYTHONPATH=/work/vggft/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main bench --model-file "$T" \
      --batch-sizes 64 --repeats 7 --json > /work/vggft/bench/bench_$i.txt 2>/dev/null
done
