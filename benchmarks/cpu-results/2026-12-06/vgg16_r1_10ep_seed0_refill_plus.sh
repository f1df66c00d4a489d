#!/bin/bash
# VGG-16 revision 1, 10 epochs, seed 0: refill+ at r=0.1 then r=0.2 on one store (dense reused), bench b64 x3 after each
cd /work/s3
PY="env PYTHONPATH=/work/s3/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main"
for R in 0.1 0.2; do
  $PY find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seed 0 --seeds 1 --levels 1 \
      --fraction 0.6 --structure channel --rewind 1ep --refill-rate $R --baselines= --store S --json --plot vgg_r1_10ep_seed0_r$R.png > study_r$R.json 2> study_r$R.err
  echo "rc=$?" >> study_r$R.err
  T=$(ls -t S/runs/*/seed_0/level_1/ticket.safetensors | head -1)
  echo "$T" > ticket_r$R.path
  for i in 1 2 3; do
    $PY bench --model-file "$T" --batch-sizes 64 --repeats 7 --json > bench_r${R}_$i.json 2> bench_r${R}_$i.err
  done
  touch finished_r$R
done
echo done > finished
