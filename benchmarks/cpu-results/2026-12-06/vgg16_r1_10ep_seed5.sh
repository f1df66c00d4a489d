#!/bin/bash
# VGG-16 revision 1, 10 epochs, seed 5, a new store: refill+ r=0.1 with --refill-multiple 16 (trains dense too), then
# the exact-width r=0.1 ticket (reuses dense), then both benched in turns (5 rounds). Rerun to resume: the store
# reuses finished runs and resumes interrupted ones. From the worktree /work/s5/tree.
PY="env PYTHONPATH=/work/s5/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main"
N=5
cd /work/s6
for M in 16 1; do
  if [ ! -f finished_m$M ]; then
    $PY find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seed $N --seeds 1 --levels 1 \
        --fraction 0.6 --structure channel --rewind 1ep --refill-rate 0.1 --refill-multiple $M --baselines= --store S --json \
        --plot vgg_r1_10ep_seed${N}_r0.1_m$M.png > study_m$M.json 2> study_m$M.err
    echo "rc=$?" >> study_m$M.err
    SID=$(python3 -c "import json;print(json.load(open('study_m$M.json'))['study_id'])") || exit 1
    echo "S/runs/$SID/seed_$N/level_1/ticket.safetensors" > ticket_m$M.path
    touch finished_m$M
  fi
done
for i in 1 2 3 4 5; do
  for M in 1 16; do
    $PY bench --model-file "$(cat ticket_m$M.path)" --batch-sizes 64 --repeats 7 --json > turns_m${M}_$i.json 2> turns_m${M}_$i.err
  done
done
echo done > all.done
