#!/bin/bash
# VGG-16 revision 1, 10 epochs, seed 4, refill+ r=0.1 with --refill-multiple 16, on the seed-4 store (dense reused),
# then 5 rounds benched in turns with the exact-width r=0.1 ticket. From a worktree at the commit that adds the option.
PY="env PYTHONPATH=/work/s5/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main"
cd /work/s5
S=/work/s4/S
$PY find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seed 4 --seeds 1 --levels 1 \
    --fraction 0.6 --structure channel --rewind 1ep --refill-rate 0.1 --refill-multiple 16 --baselines= --store $S --json \
    --plot vgg_r1_10ep_seed4_r0.1_m16.png > study_m16.json 2> study_m16.err
echo "rc=$?" >> study_m16.err
SID=$(python3 -c "import json;print(json.load(open('study_m16.json'))['study_id'])")
echo "$S/runs/$SID/seed_4/level_1/ticket.safetensors" > ticket_m16.path
echo "$S/runs/13ff3b390b7e4e50/seed_4/level_1/ticket.safetensors" > ticket_m1.path
for i in 1 2 3 4 5; do
  for M in m1 m16; do
    $PY bench --model-file "$(cat ticket_$M.path)" --batch-sizes 64 --repeats 7 --json > turns_${M}_$i.json 2> turns_${M}_$i.err
  done
done
echo done > all.done
