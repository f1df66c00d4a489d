#!/bin/bash
# the study, from a worktree at commit 1dccffa (revision 1 of cifar_vgg_16); the bench rounds: vgg16_r1_10ep_seed1_bench.sh
cd /work/s1
PYTHONPATH=/work/s1/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seed 1 --seeds 1 --levels 1 \
    --fraction 0.6 --structure channel --rewind 1ep --baselines= --store S --json --plot vgg_r1_10ep_seed1.png > study.json 2> study.err
echo "rc=$?" >> study.err
