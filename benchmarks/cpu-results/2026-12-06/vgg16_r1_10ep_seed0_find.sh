#!/bin/bash
cd /work/r1
PYTHONPATH=/work/r1/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seeds 1 --levels 1 \
    --fraction 0.6 --structure channel --rewind 1ep --baselines= --store S --json --plot vgg_r1_10ep_seed0.png > study.json 2> study.err
echo "rc=$?" >> study.err
