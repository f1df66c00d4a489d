#!/usr/bin/env bash
# After the seed-3 VGG-16 study: its ticket's speed and FLOPs (with the code that trained it, revision 0),
# then revision 0 against revision 1 of cifar_vgg_16 (first 120 steps) and cifar_resnet_20 (2 epochs).
set -uo pipefail
while kill -0 15504 2>/dev/null; do sleep 20; done
PY=/work/main/.venv/bin/python
OLD=/work/S3/tree/src
NEW=/work/main/src
R=/work/S3/results
D=/work/shared/data
ticket=$(ls /work/S3/store/runs/*/seed_0/level_1/ticket.safetensors | head -1)
echo "ticket $ticket" > $R/log.txt
for round in 1 2 3; do
  PYTHONPATH=$OLD $PY -m ticketlab.cli.main bench --model-file "$ticket" --batch-sizes 64 --repeats 7 --json > $R/bench_seed3_$round.json 2>>$R/log.txt
done
(cd /work/S3/tree/benchmarks && PYTHONPATH=$OLD $PY compact_flops.py "$ticket" --multiples 1,8 --repeats 7 --rounds 2 --out $R/flops_seed3.json > $R/flops_seed3.txt 2>>$R/log.txt)
for rev in 1 0; do
  src=$([ $rev = 1 ] && echo $NEW || echo $OLD)
  (cd /work/main/benchmarks && PYTHONPATH=$src $PY vgg_start.py --data-dir $D --steps 120 > $R/vgg_start_rev$rev.txt 2>>$R/log.txt)
done
for seed in 0 1 2; do
  for rev in 1 0; do
    src=$([ $rev = 1 ] && echo $NEW || echo $OLD)
    PYTHONPATH=$src $PY -m ticketlab.cli.main train --model cifar_resnet_20 --dataset cifar10 --data-dir $D --epochs 2 \
      --seed $seed --store /work/S3/store_rev$rev --json --quiet > $R/resnet20_2ep_rev${rev}_seed$seed.json 2>>$R/log.txt
  done
done
echo done >> $R/log.txt
