#!/usr/bin/env bash
# CIFAR-10 in three parts for the device tool (benchmarks/GPU.md): a call carries at most 64 MiB with the
# working tree, and the official pickles are 176 MiB, so each part holds two files compressed with xz -0
# (30.7 -> 24.9 MB each). A part and the repository then leave room under the limit.
#   here:       bash benchmarks/gpu_data.sh pack [SHARED_DATA]       -> .devdata1 .devdata2 .devdata3
#   on device:  bash benchmarks/gpu_data.sh unpack N [DATA_DIR]      -> DATA_DIR/cifar-10-batches-py/
set -eu
case ${1:-} in
pack)
    src=${2:-../shared/data}/cifar-10-batches-py
    parts=("data_batch_1 data_batch_2" "data_batch_3 data_batch_4" "data_batch_5 test_batch batches.meta")
    for n in 1 2 3; do
        rm -rf ".devdata$n" && mkdir ".devdata$n"
        for f in ${parts[$((n - 1))]}; do xz -0 -T2 -c "$src/$f" > ".devdata$n/$f.xz"; done
    done
    du -sh .devdata1 .devdata2 .devdata3 ;;
unpack)
    dest=${3:-/tmp/data}/cifar-10-batches-py
    mkdir -p "$dest"
    # python's lzma rather than the xz tool, which a bare machine may lack
    python3 -c "import lzma, pathlib, sys
for p in pathlib.Path(sys.argv[1]).glob('*.xz'):
    pathlib.Path(sys.argv[2], p.stem).write_bytes(lzma.decompress(p.read_bytes()))" ".devdata$2" "$dest"
    ls "$dest" ;;
*)
    echo "usage: $0 pack [SHARED_DATA] | unpack N [DATA_DIR]" >&2; exit 2 ;;
esac
