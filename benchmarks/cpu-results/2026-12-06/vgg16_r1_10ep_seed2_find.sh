#!/bin/bash
# the study, from a worktree at commit ee71a41 (twenty-fourth session) (revision 1 of cifar_vgg_16), then bench at b64, 3 rounds
cd /work/s2
PYTHONPATH=/work/s2/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seed 2 --seeds 1 --levels 1 \
    --fraction 0.6 --structure channel --rewind 1ep --baselines= --store S --json --plot vgg_r1_10ep_seed2.png > study.json 2> study.err
echo "rc=$?" >> study.err
T=$(ls S/runs/*/seed_2/level_1/ticket.safetensors | head -1)
for i in 1 2 3; do
  PYTHONPATH=/work/s2/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main bench --model-file "$T" --batch-sizes 64 --repeats 7 --json > bench_$i.json 2> bench_$i.err
done
echo done > finished
