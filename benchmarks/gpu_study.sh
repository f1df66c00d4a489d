#!/usr/bin/env bash
# One device call's share of a `ticketlab find` study too long for one call (benchmarks/GPU.md, "What does not
# fit in one session"): unpack the store carried in, run the study for at most SECONDS (then SIGTERM makes it
# checkpoint after the current step and stop), and pack the store into $OUT/store.tgz.part-* (15 MiB pieces:
# a call brings back files of at most 16 MiB) to carry into the next call.
#   bash benchmarks/gpu_study.sh DATA_DIR SECONDS CARRY_DIR FIND_OPTION ...
# CARRY_DIR holds the previous call's store.tgz.part-* files (empty or absent for the first call). Prints the
# study's JSON summary when it finished, else "checkpointed: run again". DEVICE (default cuda) is passed to find.
set -u
data=$1 seconds=$2 carry=$3
shift 3
out=${OUT:-benchmarks/results/study}
mkdir -p "$out"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
rm -rf /tmp/study-store
if compgen -G "$carry/store.tgz.part-*" > /dev/null; then
    cat "$carry"/store.tgz.part-* | tar xzf - -C /tmp || { echo "the carried store does not unpack" >&2; exit 2; }
fi
mkdir -p /tmp/study-store
timeout "$seconds" python3 -m ticketlab.cli.main find --data-dir "$data" --store /tmp/study-store \
    --device "${DEVICE:-cuda}" --json "$@" > "$out/find.txt" 2> "$out/find.log"
code=$?
tar czf - -C /tmp study-store | split -b 15M -d - "$out/store.tgz.part-"
ls -l "$out"/store.tgz.part-*
if [ "$code" = 0 ]; then tail -1 "$out/find.txt"; else echo "checkpointed (exit $code): run again with the parts"; fi
