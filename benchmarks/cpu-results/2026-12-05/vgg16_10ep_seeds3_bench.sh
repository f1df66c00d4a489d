#!/usr/bin/env bash
# The three seeds' level-1 VGG-16 channel tickets of the 10-epoch study (store /work/vgg10/store, study
# f44dce6fd6cc3c27), timed against dense at batch 64 on the idle machine, three rounds, seeds in turns.
# Seed 0's ticket ships with the study; seeds 1 and 2 get theirs from vgg16_10ep_seed1_ticket.py.
set -euo pipefail
here=$(dirname "$0")
study=/work/vgg10/store/runs/f44dce6fd6cc3c27
python "$here/vgg16_10ep_seed1_ticket.py" 1 "$study"
python "$here/vgg16_10ep_seed1_ticket.py" 2 "$study"
tickets=("$study/seed_0/level_1/ticket.safetensors" /work/vgg10s1/seed1_ticket.safetensors /work/vgg10s2/seed2_ticket.safetensors)
for round in 1 2 3; do
  for seed in 0 1 2; do
    python -m ticketlab.cli.main bench --model-file "${tickets[$seed]}" --batch-sizes 64 --repeats 7 --json \
      > "$here/vgg16_10ep_seeds3_bench_seed${seed}_${round}.json"
  done
done
