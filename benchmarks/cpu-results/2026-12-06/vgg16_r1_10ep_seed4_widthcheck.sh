#!/bin/bash
# After run_r0.sh: seed 4's r=0.1 ticket and the same ticket with seed 3's widths, benched in turns, 5 rounds.
cd /work/s4

PY="env PYTHONPATH=/work/s4/tree/src /work/main/.venv/bin/python -m ticketlab.cli.main"
for i in 1 2 3 4 5; do
  $PY bench --model-file "$(cat ticket_r0.1.path)" --batch-sizes 64 --repeats 7 --json > replica/own_$i.json 2> replica/own_$i.err
  $PY bench --model-file replica/seed4_with_seed3_widths.safetensors --batch-sizes 64 --repeats 7 --json > replica/seed3w_$i.json 2> replica/seed3w_$i.err
done
echo done > replica/done
