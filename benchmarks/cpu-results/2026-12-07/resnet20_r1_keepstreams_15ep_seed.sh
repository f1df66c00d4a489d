#!/bin/bash
# ResNet-20 revision 1, 15 epochs, one seed in a new store, one layer-wise step of 75% with --keep-streams (full
# 16/32/64 streams, a quarter of each block's inner channels): more seeds of the 2026-12-07 seed-0 run
# (resnet20_r1_keepstreams_15ep_seed0.sh). Rerun to resume. Usage: SEED WORKDIR TREE (a worktree of the repo).
# As run on 2026-12-07:   1 /work/s12 /work/s11/tree (c4be0a0)    2 /work/s14 /work/s13/tree (0281e96)
PY="env PYTHONPATH=$3/src /work/main/.venv/bin/python"
cd "$2" || exit 1
$PY -m ticketlab.cli.main find --model cifar_resnet_20 --dataset cifar10 --data-dir /work/shared/data --epochs 15 \
    --levels 1 --structure channel --rewind 1ep --store S --json --fraction 0.75 --scope layerwise --keep-streams \
    --seed "$1" --seeds 1 --baselines= > study.json 2> study.err
echo "rc=$?" >> study.err
touch all.done
