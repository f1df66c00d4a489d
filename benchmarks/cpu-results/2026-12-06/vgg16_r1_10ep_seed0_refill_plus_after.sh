#!/bin/bash
# after run.sh: the r=0 ticket of the same store (dense reused), then all three tickets benched in turns, 5 rounds
cd /work/s3
while [ ! -f finished ]; do sleep 20; done
PY="env PYTHONPATH=/work/s3/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main"
R=0
$PY find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seed 0 --seeds 1 --levels 1 \
    --fraction 0.6 --structure channel --rewind 1ep --refill-rate $R --baselines= --store S --json --plot vgg_r1_10ep_seed0_r$R.png > study_r$R.json 2> study_r$R.err
echo "rc=$?" >> study_r$R.err
ls -t S/runs/*/seed_0/level_1/ticket.safetensors | head -1 > ticket_r$R.path
for i in 1 2 3 4 5; do
  for R in 0 0.1 0.2; do
    $PY bench --model-file "$(cat ticket_r$R.path)" --batch-sizes 64 --repeats 7 --json > turns_r${R}_$i.json 2> turns_r${R}_$i.err
  done
done
echo done > finished_all
