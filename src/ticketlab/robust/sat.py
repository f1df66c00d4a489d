"""Self-adaptive training (Huang, Zhang & Zhang 2020, "Self-Adaptive Training: beyond Empirical Risk
Minimization", NeurIPS): train on a running average of the model's own predictions instead of the
given, possibly noisy, labels.

Each object is a hook (it holds the per-example target table, moves it to the device and saves it for
exact resume) and provides the loss: pass `hook.loss` as the trainer's `loss_fn` and the same object
in `hooks`. Epochs are 0-based: epochs 0 .. start_epoch-1 are the plain cross-entropy warm-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from ticketlab.errors import TicketlabError
from ticketlab.train.hooks import Hook

if TYPE_CHECKING:
    from ticketlab.train.trainer import Trainer


class _TargetTable(Hook):
    """The table t [N, K], one-hot of the given labels at first, moved toward the predictions by EMA."""

    def __init__(self, labels: torch.Tensor, num_classes: int, alpha: float = 0.9, start_epoch: int = 60) -> None:
        if labels.dim() != 1 or labels.dtype.is_floating_point:
            raise TicketlabError(
                f"labels must be a 1-D integer tensor of class indices, got {labels.dtype} {tuple(labels.shape)}"
            )
        if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
            raise TicketlabError(
                f"labels must lie in [0, {num_classes}), got {int(labels.min())}..{int(labels.max())}; "
                "check num_classes"
            )
        if not 0.0 <= alpha < 1.0:
            raise TicketlabError(f"SAT alpha must be in [0, 1), got {alpha}; it weighs the old target (paper: 0.9)")
        if start_epoch < 0:
            raise TicketlabError(f"SAT start_epoch must be >= 0, got {start_epoch} (paper: 60)")
        self.table = F.one_hot(labels.long(), num_classes).float()
        self.alpha, self.start_epoch = alpha, start_epoch
        self._trainer: Trainer | None = None

    def on_start(self, trainer: Trainer) -> None:
        if len(trainer.data) != len(self.table):
            raise TicketlabError(
                f"SAT was given {len(self.table)} labels but the training set has {len(trainer.data)}; "
                "pass the full training label tensor in training-set order"
            )
        self.table = self.table.to(trainer.device)
        self._trainer = trainer

    def _adapting(self) -> bool:
        """Whether the step being taken is past the warm-up; needs the trainer this hook was started by."""
        if self._trainer is None:
            raise TicketlabError(
                f"{type(self).__name__}.loss was called before training started; pass the same object in "
                "hooks=[...] as well as loss_fn=<it>.loss, so it knows the epoch and device"
            )
        return self._trainer.iteration // self._trainer.steps_per_epoch >= self.start_epoch

    @torch.no_grad()
    def _update(self, index: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """t_i <- alpha * t_i + (1 - alpha) * p_i for this batch's examples; returns the new rows."""
        rows = self.alpha * self.table[index] + (1.0 - self.alpha) * probs
        self.table[index] = rows
        return rows

    def state_dict(self) -> dict[str, Any]:
        return {"table": self.table}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["table"].shape != self.table.shape:
            raise TicketlabError(
                f"stored SAT targets have shape {tuple(state['table'].shape)}, this run {tuple(self.table.shape)}; "
                "resume with the labels and classes of the stored run"
            )
        self.table = state["table"].to(self.table.device)


class SelfAdaptiveTraining(_TargetTable):
    """Self-adaptive training for classification with noisy labels.

    Warm-up (epoch < start_epoch): mean cross-entropy on the given labels (no label smoothing).
    After it, per minibatch: p = softmax(logits) without gradient, t_i <- alpha t_i + (1 - alpha) p_i,
    w_i = max_j t_ij, loss = sum_i w_i (-sum_j t_ij log softmax(logits)_ij) / sum_i w_i: examples whose
    target has become uncertain (likely mislabelled) count less.
    """

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if not self._adapting():
            return F.cross_entropy(logits, targets)
        t = self._update(index, logits.detach().softmax(1))
        w = t.max(1).values
        per_example = -(t * logits.log_softmax(1)).sum(1)
        return (w * per_example).sum() / w.sum()

    def corrected_labels(self) -> torch.Tensor:
        """argmax of the target table: the labels SAT has come to believe."""
        return self.table.argmax(1)


class SelectiveSAT(_TargetTable):
    """Self-adaptive training for selective classification: K class outputs plus one "abstain" output.

    Our reading of the paper's selective variant: the table tracks the EMA of
    the softmax over the K class outputs only, exactly as SAT does. After the warm-up (cross-entropy on
    the first K outputs), example i with given label y_i is trained toward a two-point target over all
    K + 1 outputs: t_{i,y_i} on class y_i and 1 - t_{i,y_i} on abstain; loss = -mean_i (t_{i,y_i} log
    s_{i,y_i} + (1 - t_{i,y_i}) log s_{i,K}), s = softmax of all K + 1 logits, with no re-weighting.
    y_i is the given label (the class the example was trained on), not the table's argmax; the two
    target weights already sum to 1, so no normalisation is needed. An example the model does not
    believe in (a low EMA on its given label) thus pushes its mass to abstention.
    """

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        k = self.table.shape[1]
        if logits.shape[1] != k + 1:
            raise TicketlabError(
                f"selective SAT needs {k} class outputs plus one abstain output, got {logits.shape[1]}; "
                f"build the model with {k + 1} outputs"
            )
        if not self._adapting():
            return F.cross_entropy(logits[:, :k], targets)
        t = self._update(index, logits.detach()[:, :k].softmax(1))
        t_y = t.gather(1, targets[:, None]).squeeze(1)
        log_s = logits.log_softmax(1)
        log_s_y = log_s.gather(1, targets[:, None]).squeeze(1)
        return -(t_y * log_s_y + (1.0 - t_y) * log_s[:, k]).mean()

    @staticmethod
    def confidence(logits: torch.Tensor) -> torch.Tensor:
        """1 - softmax(logits)[:, K]: the probability of not abstaining (higher = more confident)."""
        return 1.0 - logits.softmax(1)[:, -1]
