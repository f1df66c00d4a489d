#!/bin/bash
# After the VGG-16 seed-7 run (/work/s8): ResNet-20 revision 1, 15 epochs, seed 0, a new store, one layer-wise
# step of 75% with --keep-streams (full 16/32/64 streams, a quarter of each block's inner channels), then
# `bench` on its ticket 3 times and widths_pair.py 3 times. Rerun to resume. From the worktree /work/s9/tree.
PY="env PYTHONPATH=/work/s9/tree/src /work/main/.venv/bin/python"
cd /work/s9
while [ ! -f /work/s8/all.done ]; do sleep 30; done
if [ ! -f finished ]; then
  $PY -m ticketlab.cli.main find --model cifar_resnet_20 --dataset cifar10 --data-dir /work/shared/data --epochs 15 \
      --levels 1 --structure channel --rewind 1ep --store S --json --fraction 0.75 --scope layerwise --keep-streams \
      --seeds 1 --baselines= > study.json 2> study.err
  echo "rc=$?" >> study.err
  SID=$(python3 -c "import json;print(json.load(open('study.json'))['study_id'])") || exit 1
  echo "S/runs/$SID/seed_0/level_1/ticket.safetensors" > ticket.path
  touch finished
fi
for i in 1 2 3; do
  [ -s bench_$i.json ] || $PY -m ticketlab.cli.main bench --model-file "$(cat ticket.path)" --batch-sizes 64 \
      --repeats 7 --json > bench_$i.json 2> bench_$i.err
  [ -s pair_$i.json ] || $PY widths_pair.py 7 > pair_$i.json 2> pair_$i.err
done
touch all.done
