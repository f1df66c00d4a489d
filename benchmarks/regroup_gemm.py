"""Regroup's dense blocks run as dense GEMMs on the CPU, against the dense convolution (BENCHMARKS.md).

Chen et al. (2022) run each block of a regrouped layer as a dense GEMM over the im2col matrix of
its input, with custom GPU kernels. This times that on the CPU for single 3x3 layers of the CIFAR
networks: the layer's weights are pruned by magnitude to `--sparsity` and regrouped
(`ticketlab.sparsity.regroup`), then

  * dense: F.conv2d with the regrouped (zero-filled) weights, channels-last, as ticketlab runs it;
  * blocks: F.unfold (im2col), one matmul per block on its rows and columns, written into the output.

Both give the same numbers (checked); the two take turns within each repetition.

    python benchmarks/regroup_gemm.py [--batch 64] [--sparsity 0.8] [--repeats 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from ticketlab.sparsity.regroup import dense_blocks

# (in channels, out channels, image side) of 3x3 layers: ResNet-20's three stages, VGG-16's five
LAYERS = [(16, 16, 32), (32, 32, 16), (64, 64, 8), (64, 64, 32), (128, 128, 16), (256, 256, 8), (512, 512, 4),
          (512, 512, 2)]


def _blocks_forward(x: torch.Tensor, blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                    out_channels: int) -> torch.Tensor:
    n, _, h, w = x.shape
    columns = F.unfold(x, 3, padding=1)  # [N, C_in * 9, H * W]
    out = x.new_zeros(n, out_channels, h * w)
    for rows, cols, weight in blocks:
        out[:, rows] = weight @ columns[:, cols]
    return out.view(n, out_channels, h, w)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for cin, cout, side in LAYERS:
        weight = torch.randn(cout, cin, 3, 3)
        threshold = weight.abs().flatten().kthvalue(int(args.sparsity * weight.numel())).values
        found = dense_blocks(weight.abs() > threshold)
        mask = torch.zeros(cout, cin * 9, dtype=torch.bool)
        for block in found:
            mask[block.rows.unsqueeze(1), block.cols] = True
        kept = (weight.flatten(1) * mask).view_as(weight).contiguous(memory_format=torch.channels_last)
        flat = kept.flatten(1)
        blocks = [(b.rows, b.cols, flat[b.rows][:, b.cols].contiguous()) for b in found]
        x = torch.randn(args.batch, cin, side, side).contiguous(memory_format=torch.channels_last)
        runs = {"dense": lambda: F.conv2d(x, kept, padding=1), "blocks": lambda: _blocks_forward(x, blocks, cout)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        with torch.no_grad():
            gap = (runs["dense"]() - runs["blocks"]()).abs().max().item()
            for _ in range(3):  # warm-up
                for run in runs.values():
                    run()
            for _ in range(args.repeats):
                for name, run in runs.items():
                    start = time.perf_counter()
                    run()
                    times[name].append(time.perf_counter() - start)
        dense, blocked = (statistics.median(times[name]) * 1e3 for name in ("dense", "blocks"))
        rows.append({"layer": f"{cin}->{cout} @ {side}x{side}", "blocks": len(found),
                     "density": round(mask.float().mean().item(), 3), "dense_ms": round(dense, 3),
                     "blocks_ms": round(blocked, 3), "speedup": round(dense / blocked, 3), "max_abs_diff": gap})
    if args.json:
        print(json.dumps({"batch": args.batch, "sparsity": args.sparsity, "threads": torch.get_num_threads(),
                          "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                          "layers": rows}))
        return
    print(f"batch {args.batch}, magnitude sparsity {args.sparsity} then regroup, {torch.get_num_threads()} threads")
    print(f"{'layer':>20} {'blocks':>6} {'density':>8} {'dense ms':>9} {'blocks ms':>10} {'speed-up':>9}")
    for r in rows:
        print(f"{r['layer']:>20} {r['blocks']:>6} {r['density']:>8.3f} {r['dense_ms']:>9.2f} {r['blocks_ms']:>10.2f} "
              f"{r['speedup']:>8.2f}x")


if __name__ == "__main__":
    main()
