"""2:4 sparse Linear layers on sparse tensor cores against the same layers dense, both in fp16.

  python benchmarks/two_four_speed.py [--dims 1024,4096] [--batch-sizes 256,4096,16384] [--repeats 7]
      [--device cuda] [--out results.json]

The network is a transformer's feed-forward block, Linear(d, 4d) -> GELU -> Linear(4d, d), the
shape the 2:4 kernels are made for, at sizes chosen here. In the zoo only Conv-2/4/6 have Linear
layers the kernels accept (their hidden 256-wide layers); `benchmarks/gpu_all.sh` benches a conv_2
2:4 ticket through `ticketlab bench --two-four` as well.
Both variants hold the same 2:4-masked weights: "dense" multiplies the zeros, "2:4" skips them
(`ticketlab.sparsity.semistructured`). Timed side by side by `ticketlab.speed.measure` (medians of
turns). On a machine without the kernels it prints the reason and measures nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from datetime import date

import torch
from common import machine
from torch import nn

from ticketlab.sparsity.masks import nm_masks
from ticketlab.sparsity.semistructured import semi_structured_support, to_semi_structured
from ticketlab.speed import measure


def feed_forward(d: int, device: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The block in fp16 with 2:4 magnitude masks applied to both weights, and the masks."""
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
    weights = {n: p for n, p in block.named_parameters() if n.endswith("weight")}
    masks = nm_masks({n: p.detach().abs() for n, p in weights.items()}, n=2, m=4)
    with torch.no_grad():
        for name, p in weights.items():
            p.mul_(masks[name])
    return block.to(device, torch.float16).eval(), masks


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dims", default="1024,4096", help="comma list of model widths d")
    ap.add_argument("--batch-sizes", default="256,4096,16384", help="comma list (rows: tokens or images)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()

    ok, reason = semi_structured_support(args.device)
    result: dict = {"date": date.today().isoformat(), "device": args.device, "support": reason}
    if ok:
        result["machine"] = machine(args.device)
        result["blocks"] = []
        for d in (int(v) for v in args.dims.split(",")):
            dense, masks = feed_forward(d, args.device)
            sparse = copy.deepcopy(dense)
            with warnings.catch_warnings():
                # every layer must convert: a dense leftover would flatter nothing
                warnings.filterwarnings("error", message="layers left dense")
                converted = to_semi_structured(sparse, masks)
            x = torch.randn(256, d, device=args.device, dtype=torch.float16)
            with torch.inference_mode():
                reference = dense(x).float()
                error = (sparse(x).float() - reference).abs().max().item() / reference.abs().max().item()
            batches = [int(v) for v in args.batch_sizes.split(",")]
            timings = measure({"dense_fp16": dense, "2:4_fp16": sparse}, (d,), batches, device=args.device,
                              repeats=args.repeats, dtype=torch.float16)
            block = {"d": d, "converted": converted, "max_relative_difference": error,
                     "timings": [t.as_dict() for t in timings]}
            result["blocks"].append(block)
            for t in timings:
                if t.variant == "2:4_fp16":
                    print(f"d={d} batch={t.batch_size}: 2:4 {t.latency_ms:.3f} ms, {t.ratio:.2f}x dense "
                          f"(outputs differ by {error:.1e} of their largest)", flush=True)
    else:
        print(f"nothing measured: {reason}")
    text = json.dumps(result)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
