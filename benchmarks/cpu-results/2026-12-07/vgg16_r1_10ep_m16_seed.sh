#!/bin/bash
# VGG-16 revision 1, 10 epochs, one seed in a new store: refill+ r=0.1 with --refill-multiple 16 (trains dense
# too), then its ticket benched 3 times alone. Rerun to resume. Usage: SEED WORKDIR TREE (a worktree of the repo).
# As run on 2026-12-07:   6 /work/s7 /work/s5/tree (d2a0e4d)    7 /work/s8 /work/s8/tree (2b62143)
#                         8 /work/s11 /work/s11/tree (c4be0a0)  9 /work/s13 /work/s13/tree (0281e96)
#                        10 /work/s15 /work/s15/tree (366160b)  11 /work/s16 /work/s16/tree (46e8983)
N=$1; M=16
PY="env PYTHONPATH=$3/src /work/main/.venv/bin/python -m ticketlab.cli.main"
cd "$2" || exit 1
if [ ! -f finished_m$M ]; then
  $PY find --model cifar_vgg_16 --dataset cifar10 --data-dir /work/shared/data --epochs 10 --seed $N --seeds 1 --levels 1 \
      --fraction 0.6 --structure channel --rewind 1ep --refill-rate 0.1 --refill-multiple $M --baselines= --store S --json \
      --plot vgg_r1_10ep_seed${N}_r0.1_m$M.png > study_m$M.json 2> study_m$M.err
  echo "rc=$?" >> study_m$M.err
  SID=$(python3 -c "import json;print(json.load(open('study_m$M.json'))['study_id'])") || exit 1
  echo "S/runs/$SID/seed_$N/level_1/ticket.safetensors" > ticket_m$M.path
  touch finished_m$M
fi
for i in 1 2 3; do
  [ -s alone_m${M}_$i.json ] && continue
  $PY bench --model-file "$(cat ticket_m$M.path)" --batch-sizes 64 --repeats 7 --json > alone_m${M}_$i.json 2> alone_m${M}_$i.err
done
touch all.done
