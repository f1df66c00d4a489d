#!/bin/bash
# Seed 4's plain-refill (r=0) ticket on the same store (dense reused), then both tickets benched in turns, 5 rounds.
PY="env PYTHONPATH=/work/s4/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main"
N=4
cd /work/s4
R=0
$PY find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seed $N --seeds 1 --levels 1 \
    --fraction 0.6 --structure channel --rewind 1ep --refill-rate $R --baselines= --store S --json --plot vgg_r1_10ep_seed${N}_r$R.png > study_r$R.json 2> study_r$R.err
echo "rc=$?" >> study_r$R.err
SID=$(python3 -c "import json;print(json.load(open('study_r$R.json'))['study_id'])") || exit 1
echo "S/runs/$SID/seed_$N/level_1/ticket.safetensors" > ticket_r$R.path
for i in 1 2 3 4 5; do
  for R in 0 0.1; do
    $PY bench --model-file "$(cat ticket_r$R.path)" --batch-sizes 64 --repeats 7 --json > turns_r${R}_$i.json 2> turns_r${R}_$i.err
  done
done
echo done > all.done
