#!/bin/bash
# bench at b64, 3 rounds, on the idle machine after the study
cd /work/s1
for i in 1 2 3; do
  PYTHONPATH=/work/s1/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main bench --model-file S/runs/4e8371f172069423/seed_0/level_1/ticket.safetensors --batch-sizes 64 --repeats 7 --json > bench_$i.json 2> bench_$i.err
done
