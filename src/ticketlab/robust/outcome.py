"""What a self-adaptive training run adds to its summary: the labels it corrected, or, for the
selective variant, selective error at each coverage."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ticketlab.config import TrainConfig
from ticketlab.data import ImageDataset
from ticketlab.robust.sat import SelectiveSAT, SelfAdaptiveTraining
from ticketlab.robust.selective import coverage_table, risk_coverage_curve
from ticketlab.store.files import write_json, write_tensors
from ticketlab.train.evaluate import predict


def sat_hook(cfg: TrainConfig, train_set: ImageDataset) -> SelfAdaptiveTraining | SelectiveSAT | None:
    """The hook whose `loss` replaces cross-entropy for `cfg.loss`, or None for plain cross-entropy."""
    kind = {"sat": SelfAdaptiveTraining, "sat-selective": SelectiveSAT}.get(cfg.loss)
    if kind is None:
        return None
    return kind(train_set.train_y, train_set.num_classes, alpha=cfg.sat_alpha, start_epoch=cfg.sat_start)


def sat_outcome(hook: SelfAdaptiveTraining | SelectiveSAT, model: nn.Module, dataset: ImageDataset,
                train_set: ImageDataset, clean: torch.Tensor | None, folder: Path, seed: int = 0,
                tta: str = "none") -> dict[str, Any]:
    """Written to `folder` and returned for the run's summary. `train_set` is what the run trained on (its
    labels as given, its normalisation), `clean` those labels' true values when ticketlab added the noise
    itself. The selective table reads `dataset`'s test set as the run's test accuracy does (same statistics
    and test-time augmentation); its rows are scored on the reported half of the test set (the other half
    sets the thresholds), so even its full-coverage error is that half's, not 1 - the test accuracy."""
    given = train_set.train_y
    if isinstance(hook, SelectiveSAT):
        from ticketlab.report.selective_plot import plot_coverage_risk

        logits = predict(model, dataset.test_x, train_set.mean, train_set.std, tta=tta)
        confidence = SelectiveSAT.confidence(logits)
        correct = logits[:, :dataset.num_classes].argmax(1) == dataset.test_y
        # coverage 100% accepts everything (threshold -inf), which strict JSON cannot hold
        table = [{**row, "threshold": row["threshold"] if math.isfinite(row["threshold"]) else None}
                 for row in coverage_table(confidence, correct, seed=seed)]
        write_json(folder / "coverage.json", table)
        plot = plot_coverage_risk({"SAT (selective)": risk_coverage_curve(confidence, correct)},
                                  folder / "coverage_risk.png", table)
        return {"coverage": table, "coverage_plot": str(plot)}
    corrected = hook.corrected_labels().cpu()
    out: dict[str, Any] = {"relabelled_fraction": round(float((corrected != given).float().mean()), 6)}
    tensors = {"given": given, "corrected": corrected}
    if clean is not None:
        tensors["clean"] = clean
        wrong = given != clean
        fixed = corrected[wrong] == clean[wrong]
        out["corrected_fraction"] = round(float(fixed.float().mean()), 6) if wrong.any() else 0.0
        out["corrected_count"] = int(fixed.sum())
        out["label_accuracy_after"] = round(float((corrected == clean).float().mean()), 6)
    write_tensors(folder / "labels.safetensors", tensors)
    out["labels_file"] = str(folder / "labels.safetensors")
    return out
