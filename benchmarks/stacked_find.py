"""A whole ticket study with each level's arms stacked (`find --stack`) against one by one.

  python benchmarks/stacked_find.py --data-dir ../shared/data [--model lenet_300_100 --dataset mnist]
      [--epochs 2] [--levels 2] [--seeds 2] [--baselines reinit,random,shuffle] [--repeats 3] [--device cpu|cuda]

Each repetition runs the same study twice into fresh stores, one by one and stacked, in turns,
so machine noise hits both alike. Reported: the median wall time of each side and their ratio,
and the largest difference between the two sides' test accuracies over all levels and arms
(stacking changes the numbers by float rounding only).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import date

import torch

from ticketlab.data import load_dataset
from ticketlab.tickets import TicketConfig, find_ticket


def study(ds, args, stack: bool) -> tuple[float, dict]:
    tickets = TicketConfig(levels=args.levels, baselines=tuple(args.baselines.split(",")), seeds=args.seeds,
                           stack=stack)
    with tempfile.TemporaryDirectory() as store:
        start = time.perf_counter()
        result = find_ticket(args.model, ds, tickets=tickets, store=store, device=args.device, progress=False,
                             epochs=args.epochs)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, result.summary


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="lenet_300_100")
    ap.add_argument("--dataset", default="mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--baselines", default="reinit,random,shuffle")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    times: dict[bool, list[float]] = {False: [], True: []}
    gap = 0.0
    for _ in range(args.repeats):
        summaries = {}
        for stack in (False, True):
            seconds, summaries[stack] = study(ds, args, stack)
            times[stack].append(seconds)
        for plain, stacked in zip(summaries[False]["levels"], summaries[True]["levels"]):
            for arm in ("ticket", *args.baselines.split(",")):
                gap = max(gap, abs(plain[arm]["mean"] - stacked[arm]["mean"]))
    one_by_one, together = statistics.median(times[False]), statistics.median(times[True])
    print(json.dumps({
        "model": args.model, "dataset": args.dataset, "epochs": args.epochs, "levels": args.levels, "seeds": args.seeds,
        "baselines": args.baselines, "device": args.device, "threads": torch.get_num_threads(),
        "machine": platform.machine(), "date": str(date.today()), "repeats": args.repeats,
        "one_by_one_s": round(one_by_one, 2), "stacked_s": round(together, 2),
        "speedup": round(one_by_one / together, 3), "max_test_accuracy_difference": gap,
        "all_s": {"one_by_one": [round(t, 2) for t in times[False]], "stacked": [round(t, 2) for t in times[True]]},
    }))


if __name__ == "__main__":
    main()
