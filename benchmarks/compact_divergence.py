"""Is compacted training the masked training up to float rounding? Divergence against a known rounding change.

  python benchmarks/compact_divergence.py --data-dir ../shared/data [--model cifar_resnet_20] [--steps 60]

A channel ticket (level 1 of `find --structure channel`'s structure step on the seeded weights)
trains `--steps` CIFAR-10 steps with the model's recipe three times from the same weights and data
order: masked on 2 threads (the reference), masked on 1 thread (a pure float-rounding change:
another reduction order), and compacted on 2 threads. A rule error in compaction would show at the
first steps; rounding alone grows through training at a rate the 1-thread run shows. Printed: the
loss difference to the reference at some steps, and the largest weight difference at the end.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import Curve, channel_tickets, training_slice

from ticketlab.compact.training import compacted_for_training
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.models import build_model
from ticketlab.train import MaskHook, Trainer
from ticketlab.train.run import recipe_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="cifar_resnet_20")
    ap.add_argument("--fraction", type=float, default=0.3)
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()
    cfg = recipe_config(args.model, epochs=1)
    ds, x, y = training_slice(args.data_dir, cfg.batch_size, args.steps)
    data = DeviceData(x, y, ds.mean, ds.std, "cpu", Augment(crop_padding=4, flip=True))
    torch.manual_seed(0)
    init = build_model(args.model, num_classes=10)
    _, _, masks = next(channel_tickets(init, 1, args.fraction))

    def train(threads: int, compacted: bool) -> tuple[list[float], dict[str, torch.Tensor]]:
        torch.set_num_threads(threads)
        model, losses = build_model(args.model, num_classes=10), Curve()
        model.load_state_dict(init.state_dict())
        if compacted:
            plan = compacted_for_training(model, masks)
            Trainer(plan.small, data, cfg, hooks=[MaskHook(plan.masks), losses], progress=False).fit()
            model.load_state_dict(plan.trained_state())
        else:
            Trainer(model, data, cfg, hooks=[MaskHook(masks), losses], progress=False).fit()
        torch.set_num_threads(2)
        return losses.loss, model.state_dict()

    reference, ref_state = train(2, False)
    at = [s for s in (1, 2, 5, 10, 20, 40, 60, 100, 200) if s <= args.steps]
    out = {}
    for label, threads, compacted in (("masked, 1 thread", 1, False), ("compacted, 2 threads", 2, True)):
        losses, state = train(threads, compacted)
        gap = max(float((state[k] - ref_state[k]).abs().max()) for k in ref_state
                  if "running" not in k and state[k].is_floating_point())
        out[label] = {"loss_gap": {s: abs(losses[s - 1] - reference[s - 1]) for s in at}, "max_weight_gap": gap}
        print(f"{label}: |loss - reference| at steps " + ", ".join(f"{s}: {out[label]['loss_gap'][s]:.1e}"
                                                                    for s in at) + f"; max |weight gap| {gap:.2e}")
    print(json.dumps({"model": args.model, "steps": args.steps, **out}))


if __name__ == "__main__":
    main()
