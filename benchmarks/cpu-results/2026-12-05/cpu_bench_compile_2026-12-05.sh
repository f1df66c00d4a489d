#!/bin/bash
source /work/main/.venv/bin/activate
cd /work/main
S=/work/r20ft/store/runs
for i in 1 2 3; do
  for s in 4f1751b5d068380c aff9d568c5ba6d39 f93120233438eed4; do
    for mode in eager compile; do
      flag=""; [ $mode = compile ] && flag=--compile
      echo "== $s $mode run $i"
      ticketlab bench --model-file $S/$s/seed_0/level_1/ticket.safetensors --batch-sizes 1,64,256 --repeats 7 $flag --json | tail -1
    done
  done
done
