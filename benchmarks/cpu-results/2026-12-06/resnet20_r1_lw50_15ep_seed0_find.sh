#!/bin/bash
cd /work/r1
PYTHONPATH=/work/r1/tree2/src /work/main/.venv/bin/python -m ticketlab.cli.main find --model cifar_resnet_20 --dataset cifar10 --data-dir /work/shared/data --epochs 15 --levels 1 --structure channel \
   --rewind 1ep --store S20 --json --fraction 0.5 --scope layerwise --seeds 1 --baselines= > r20.json 2> r20.err
echo "rc=$?" >> r20.err
