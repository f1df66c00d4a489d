#!/bin/bash
# ResNet-20 revision 1, 15 epochs, seed 2, a new store, one layer-wise step of 75% with --keep-streams (full
# 16/32/64 streams, a quarter of each block's inner channels): a third seed of the 2026-12-07 seed-0 run.
# From the worktree /work/s13/tree (0281e96). Rerun to resume.
PY="env PYTHONPATH=/work/s13/tree/src /work/main/.venv/bin/python"
cd /work/s14
$PY -m ticketlab.cli.main find --model cifar_resnet_20 --dataset cifar10 --data-dir /work/shared/data --epochs 15 \
    --levels 1 --structure channel --rewind 1ep --store S --json --fraction 0.75 --scope layerwise --keep-streams \
    --seed 2 --seeds 1 --baselines= > study.json 2> study.err
echo "rc=$?" >> study.err
touch all.done
