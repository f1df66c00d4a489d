#!/bin/bash
cd /work/r20
PYTHONPATH=/work/r20/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main find --model cifar_resnet_20 --dataset cifar10 --data-dir /work/shared/data --epochs 15 --levels 1 --structure channel \
   --rewind 1ep --store S20 --json --fraction 0.5 --scope layerwise --seed 1 --seeds 1 --baselines= > r20.json 2> r20.err
echo "rc=$?" >> r20.err
# the ticket: S20/runs/b0660a2dc3f542f5/seed_1/level_1/ticket.safetensors
for i in 1 2 3; do
  PYTHONPATH=/work/r20/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main bench --model-file S20/runs/b0660a2dc3f542f5/seed_1/level_1/ticket.safetensors --batch-sizes 64 --repeats 7 --json > bench_$i.json 2> bench_$i.err
done
echo done > all.done
