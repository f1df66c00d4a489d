"""An ownership signature's cost and its robustness: what it costs a ticket, and what survives attacks.

Per seed: train the dense network, prune it one-shot by magnitude to `--density` (layer-wise, so
the signed conv keeps its share), rewind to the initial weights, and train the ticket twice: as it
is, and with a `--bits` signature written into `--layer` (tickets/signature.py). Then attack the
signed, trained weights and read the signature back after each attack:
  - fine-tuning with the ticket's masks (`--finetune-epochs`, lr a tenth of the recipe's);
  - removal by pruning a further fraction of the remaining weights, by magnitude or at random
    (no retraining: the accuracy column says what the attacker keeps).
The table gives test accuracy and mismatch rate, mean over the seeds.

    python benchmarks/signature_robustness.py --data-dir ../shared/data --dataset mnist --epochs 3 --seeds 2
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
from dataclasses import replace

import torch
from common import machine, pruned_further, test_accuracy

import ticketlab
from ticketlab.config import ModelConfig, RunConfig
from ticketlab.data import load_dataset
from ticketlab.sparsity import magnitude, masks_from_scores, random_scores, select_prunable
from ticketlab.tickets.signature import Signature, embed, verify
from ticketlab.train import recipe_config
from ticketlab.train.run import initial_model

REMOVALS = (0.2, 0.5, 0.8)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--dataset", default="mnist")
    p.add_argument("--model", default="conv_2")
    p.add_argument("--layer", default="features.conv2.weight")
    p.add_argument("--bits", type=int, default=29)
    p.add_argument("--density", type=float, default=0.2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--key", default="benchmark key")
    p.add_argument("--store", help="run store (default: a temporary folder)")
    p.add_argument("--json", help="also write the per-seed results here")
    args = p.parse_args()
    ds = load_dataset(args.dataset, data_dir=args.data_dir, download=False)
    store = args.store or tempfile.mkdtemp(prefix="signature-bench-")
    signature = Signature(args.layer, args.key, args.bits, args.bits)
    train_cfg = recipe_config(args.model, epochs=args.epochs)
    rows: dict[str, list[tuple[float, float]]] = {}

    def record(what: str, model: torch.nn.Module) -> None:
        found = verify(dict(model.named_parameters()), signature)
        rows.setdefault(what, []).append((test_accuracy(model, ds), found["mismatch_rate"]))
        print(f"  {what:32s} acc {100 * rows[what][-1][0]:.2f}%  mismatch {100 * found['mismatch_rate']:.2f}%  "
              f"chance 1e{found['log10_chance']:.1f}", flush=True)

    for seed in range(args.seeds):
        print(f"seed {seed}", flush=True)
        options = dict(store=store, epochs=args.epochs, seed=seed, progress=False)
        dense = ticketlab.train(args.model, ds, **options)
        # the ticket rewinds to the dense run's initial weights: a registered model's seeded init
        init = initial_model(RunConfig(model=ModelConfig.of(args.model), train=replace(train_cfg, seed=seed)), ds)
        masks = masks_from_scores(magnitude(select_prunable(dense.model)), args.density, "uniform")
        signed_masks = embed(masks, signature, init.state_dict())
        plain = ticketlab.train(args.model, ds, masks=masks, **options)
        signed = ticketlab.train(args.model, ds, masks=signed_masks, **options)
        record("ticket (unsigned)", plain.model)
        record("ticket (signed)", signed.model)
        # the thief fine-tunes the stolen, trained ticket: from its weights, with its masks
        tuned = ticketlab.train(copy.deepcopy(signed.model), ds, masks=signed_masks, store=store,
                                epochs=args.finetune_epochs, seed=seed + 1000, optimizer=train_cfg.optimizer,
                                lr=train_cfg.lr / 10, batch_size=train_cfg.batch_size, progress=False)
        record(f"fine-tuned {args.finetune_epochs} epoch(s), masked", tuned.model)
        generator = torch.Generator().manual_seed(seed)
        signed_weights = select_prunable(signed.model)
        for fraction in REMOVALS:
            record(f"magnitude-pruned {fraction:.0%} more",
                   pruned_further(signed.model, signed_masks, fraction, magnitude(signed_weights)))
            record(f"random-pruned {fraction:.0%} more",
                   pruned_further(signed.model, signed_masks, fraction, random_scores(signed_weights, generator)))
    print(f"\n{args.model} on {args.dataset}, {args.epochs} epochs, density {args.density}, {args.bits}x{args.bits} "
          f"bits in {args.layer}, {args.seeds} seeds; {machine()}\n")
    print("| weights | test accuracy | mismatch rate |")
    print("|---|---|---|")
    for what, values in rows.items():
        acc = statistics.mean(a for a, _ in values)
        miss = statistics.mean(m for _, m in values)
        print(f"| {what} | {100 * acc:.2f}% | {100 * miss:.2f}% |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": vars(args), "machine": machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
