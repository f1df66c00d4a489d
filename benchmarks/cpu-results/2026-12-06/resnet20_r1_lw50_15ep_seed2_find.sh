#!/bin/bash
# twenty-fourth session, worktree at ee71a41; waits for the VGG-16 seed-2 study and its bench, then ResNet-20 revision 1, half of every width, 15 epochs, seed 2
while [ ! -f /work/s2/finished ]; do sleep 20; done
cd /work/r20
PYTHONPATH=/work/s2/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main find --model cifar_resnet_20 --dataset cifar10 --data-dir /work/shared/data --epochs 15 --levels 1 --structure channel \
   --rewind 1ep --store S20 --json --fraction 0.5 --scope layerwise --seed 2 --seeds 1 --baselines= > r20.json 2> r20.err
echo "rc=$?" >> r20.err
T=$(ls S20/runs/*/seed_2/level_1/ticket.safetensors | head -1)
for i in 1 2 3; do
  PYTHONPATH=/work/s2/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main bench --model-file "$T" --batch-sizes 64 --repeats 7 --json > bench_$i.json 2> bench_$i.err
done
echo done > all.done
