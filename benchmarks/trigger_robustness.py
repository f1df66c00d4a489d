"""A trigger set's cost and its robustness: what the black-box mark costs a ticket, and what survives attacks.

Per seed: train the dense network, prune it one-shot by magnitude to `--density` (layer-wise),
rewind to the initial weights, and train the ticket twice: as it is, and with a keyed trigger set
mixed into training (tickets/trigger.py, `--size` images `--copies` times each). Then attack the
marked, trained ticket the way a thief would, on clean data only, and check its answers on the
trigger set after each attack:
  - fine-tuning with the ticket's masks: 1 epoch at a tenth of the recipe's lr, and `--retrain-epochs`
    at the full lr (a thief retraining hard);
  - removal by pruning a further fraction of the remaining weights by magnitude (no retraining: the
    accuracy column says what the attacker keeps), and 80% more then fine-tuned 1 epoch.
The table gives test accuracy, trigger accuracy and the chance bound (log10, the largest over the
seeds), against the unmarked ticket. Last, a forger's search: `--forge-keys` other keys tried on the
stolen (marked) ticket, the best of them reported, to set beside the chance bound.

    python benchmarks/trigger_robustness.py --data-dir ../shared/data --dataset mnist_subset --epochs 8 --seeds 3
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile

import torch
from common import machine, pruned_further, test_accuracy

import ticketlab
from ticketlab.data import load_dataset
from ticketlab.sparsity import magnitude, masks_from_scores, select_prunable
from ticketlab.tickets.trigger import TriggerSet, check
from ticketlab.train import recipe_config

REMOVALS = (0.2, 0.5, 0.8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", default="mnist_subset")
    p.add_argument("--model", default="conv_2")
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--copies", type=int, default=5)
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--retrain-epochs", type=int, default=3)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--forge-keys", type=int, default=2000)
    p.add_argument("--key", default="benchmark key")
    p.add_argument("--store", help="run store (default: a temporary folder)")
    p.add_argument("--json", help="also write the per-seed results here")
    args = p.parse_args()
    ds = load_dataset(args.dataset, data_dir=args.data_dir, download=False)
    store = args.store or tempfile.mkdtemp(prefix="trigger-bench-")
    trigger = TriggerSet(args.key, args.size, args.copies)
    train_cfg = recipe_config(args.model, epochs=args.epochs)
    rows: dict[str, list[tuple[float, float, float]]] = {}
    forged: list[dict] = []

    def record(what: str, model: torch.nn.Module) -> None:
        found = check(model, trigger, ds)
        rows.setdefault(what, []).append((test_accuracy(model, ds), found["accuracy"], found["log10_chance"]))
        print(f"  {what:36s} acc {100 * rows[what][-1][0]:.2f}%  trigger {100 * found['accuracy']:.0f}%  "
              f"chance 1e{found['log10_chance']:.1f}", flush=True)

    def finetune(model: torch.nn.Module, masks: dict, epochs: int, lr: float, seed: int) -> torch.nn.Module:
        return ticketlab.train(copy.deepcopy(model), ds, masks=masks, store=store, epochs=epochs, seed=seed,
                               optimizer=train_cfg.optimizer, lr=lr, batch_size=train_cfg.batch_size,
                               progress=False).model

    for seed in range(args.seeds):
        print(f"seed {seed}", flush=True)
        options = dict(store=store, epochs=args.epochs, seed=seed, progress=False)
        dense = ticketlab.train(args.model, ds, **options)
        masks = masks_from_scores(magnitude(select_prunable(dense.model)), args.density, "uniform")
        plain = ticketlab.train(args.model, ds, masks=masks, **options)
        marked = ticketlab.train(args.model, ds, masks=masks, trigger=trigger, **options)
        record("ticket (unmarked)", plain.model)
        record("ticket (marked)", marked.model)
        record("fine-tuned 1 epoch, lr/10", finetune(marked.model, masks, 1, train_cfg.lr / 10, seed + 1000))
        record(f"retrained {args.retrain_epochs} epochs, full lr",
               finetune(marked.model, masks, args.retrain_epochs, train_cfg.lr, seed + 2000))
        weights = select_prunable(marked.model)
        for fraction in REMOVALS:
            record(f"magnitude-pruned {fraction:.0%} more", pruned_further(marked.model, masks, fraction,
                                                                           magnitude(weights)))
        attacked = pruned_further(marked.model, masks, 0.8, magnitude(weights))
        thinner = {n: m & (dict(attacked.named_parameters())[n] != 0) for n, m in masks.items()}
        record("pruned 80% more, fine-tuned 1 epoch", finetune(attacked, thinner, 1, train_cfg.lr / 10, seed + 3000))
        best = None
        for k in range(args.forge_keys):
            other = TriggerSet(f"forger {seed} {k}", args.size)
            found = check(marked.model, other, ds)
            best = found if best is None or found["matches"] > best["matches"] else best
        forged.append(best)
        print(f"  best of {args.forge_keys} forged keys: trigger {100 * best['accuracy']:.0f}%  "
              f"chance 1e{best['log10_chance']:.1f}", flush=True)
    print(f"\n{args.model} on {args.dataset}, {args.epochs} epochs, density {args.density}, {args.size} trigger "
          f"images x {args.copies}, {args.seeds} seeds; {machine()}\n")
    print("| weights | test accuracy | trigger accuracy | chance (unmarked), worst seed |")
    print("|---|---|---|---|")
    for what, values in rows.items():
        acc = statistics.mean(a for a, _, _ in values)
        hit = statistics.mean(t for _, t, _ in values)
        print(f"| {what} | {100 * acc:.2f}% | {100 * hit:.1f}% | 1e{max(c for _, _, c in values):.1f} |")
    if forged:
        print(f"| best of {args.forge_keys} other keys on the marked ticket | | "
              f"{100 * statistics.mean(f['accuracy'] for f in forged):.1f}% | "
              f"1e{min(f['log10_chance'] for f in forged):.1f} (best seed) |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "machine": machine(), "rows": rows, "forged": forged}, f, indent=1)


if __name__ == "__main__":
    main()
