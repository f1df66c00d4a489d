"""Does cifar_vgg_16 start learning at its recipe's lr? BatchNorm scales U(0, 1) against scales of 1.

  python benchmarks/vgg_start.py --data-dir ../shared/data [--model cifar_vgg_16] [--steps 80] [--lr 0.1]

Trains the registered model (BatchNorm scales U(0, 1), OpenLTH's init) and the same model with
its BatchNorm scales set to 1 (the usual PyTorch init) for `--steps` CIFAR-10 steps of batch 128
(crop + flip) at a constant lr with the recipe's SGD, from the same conv weights and data order.
Printed: the mean training loss and accuracy over each quarter of the steps.
"""

from __future__ import annotations

import argparse
import json

import torch
from common import Curve, training_slice
from torch import nn

from ticketlab.config import TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.models import build_model
from ticketlab.train import Trainer


def quarters(values: list[float]) -> list[float]:
    k = max(1, len(values) // 4)
    return [round(sum(values[i:i + k]) / len(values[i:i + k]), 3) for i in range(0, len(values), k)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--model", default="cifar_vgg_16")
    ap.add_argument("--steps", type=int, default=80)
    ap.add_argument("--lr", type=float, default=0.1)
    args = ap.parse_args()
    ds, x, y = training_slice(args.data_dir, 128, args.steps)
    data = DeviceData(x, y, ds.mean, ds.std, "cpu", Augment(crop_padding=4, flip=True))
    cfg = TrainConfig(epochs=1, batch_size=128, lr=args.lr, schedule="constant", momentum=0.9, nesterov=False,
                      weight_decay=1e-4)
    out = {}
    for label, scales_one in (("bn_scales_uniform", False), ("bn_scales_one", True)):
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=10)
        if scales_one:
            for module in model.modules():
                if isinstance(module, nn.BatchNorm2d):
                    nn.init.ones_(module.weight)
        curve = Curve()
        Trainer(model, data, cfg, hooks=[curve], progress=False).fit()
        out[label] = {"loss": quarters(curve.loss), "accuracy": quarters(curve.accuracy)}
        print(f"{label}: loss per quarter {out[label]['loss']}, accuracy {out[label]['accuracy']}", flush=True)
    print(json.dumps({"model": args.model, "steps": args.steps, "lr": args.lr, **out}))


if __name__ == "__main__":
    main()
