from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from ticketlab.config import TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.errors import TicketlabError
from ticketlab.robust.sat import SelectiveSAT, SelfAdaptiveTraining
from ticketlab.train import Hook, Trainer

from helpers import TinyNet, tiny_dataset

LABELS = torch.tensor([0, 2, 1, 2, 0])


def _started(hook, iteration, steps_per_epoch=10):
    """A hook started by a stand-in trainer that is `iteration` steps into training."""
    trainer = SimpleNamespace(data=[None] * len(hook.table), device=torch.device("cpu"),
                              iteration=iteration, steps_per_epoch=steps_per_epoch)
    hook.on_start(trainer)
    return trainer


def _batch(columns, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, columns, generator=g, requires_grad=True)
    return logits, torch.tensor([2, 0, 2]), torch.tensor([3, 4, 1])


def test_before_start_epoch_the_loss_is_cross_entropy_and_the_table_stays():
    sat = SelfAdaptiveTraining(LABELS, 3, alpha=0.9, start_epoch=2)
    _started(sat, iteration=19)  # the last step of epoch 1
    logits, targets, index = _batch(3)
    assert torch.equal(sat.loss(logits, targets, index), F.cross_entropy(logits, targets))
    assert torch.equal(sat.table, F.one_hot(LABELS, 3).float())


def test_sat_update_and_weighted_loss_equal_the_paper_formula():
    sat = SelfAdaptiveTraining(LABELS, 3, alpha=0.7, start_epoch=2)
    _started(sat, iteration=20)  # the first step of epoch 2
    logits, targets, index = _batch(3)
    loss = sat.loss(logits, targets, index)
    (grad,) = torch.autograd.grad(loss, logits)

    direct_logits = logits.detach().clone().requires_grad_(True)
    p = torch.softmax(direct_logits.detach(), 1)
    t = 0.7 * F.one_hot(LABELS[index], 3).float() + 0.3 * p
    w = t.max(1).values
    log_s = torch.log(torch.exp(direct_logits) / torch.exp(direct_logits).sum(1, keepdim=True))
    expected = sum(w[i] * -(t[i] * log_s[i]).sum() for i in range(3)) / w.sum()
    (expected_grad,) = torch.autograd.grad(expected, direct_logits)

    assert torch.allclose(loss, expected) and torch.allclose(grad, expected_grad)
    assert torch.allclose(sat.table[index], t)
    assert torch.equal(sat.table[[0, 2]], F.one_hot(LABELS[[0, 2]], 3).float())  # not in the batch


def test_corrected_labels_follow_a_model_that_keeps_predicting_another_class():
    sat = SelfAdaptiveTraining(LABELS, 3, alpha=0.9, start_epoch=0)
    _started(sat, iteration=0)
    says_one = torch.tensor([[0.0, 8.0, 0.0]])
    assert sat.corrected_labels().tolist() == LABELS.tolist()
    for _ in range(10):
        sat.loss(says_one, torch.tensor([0]), torch.tensor([0]))
    assert sat.corrected_labels().tolist() == [1, 2, 1, 2, 0]


def test_selective_loss_equals_the_two_point_target_formula():
    sat = SelectiveSAT(LABELS, 3, alpha=0.6, start_epoch=1)
    _started(sat, iteration=10)
    logits, targets, index = _batch(4)
    loss = sat.loss(logits, targets, index)
    (grad,) = torch.autograd.grad(loss, logits)

    direct_logits = logits.detach().clone().requires_grad_(True)
    p = torch.softmax(direct_logits.detach()[:, :3], 1)
    t = 0.6 * F.one_hot(LABELS[index], 3).float() + 0.4 * p
    s = torch.softmax(direct_logits, 1)
    terms = [t[i, targets[i]] * torch.log(s[i, targets[i]]) + (1 - t[i, targets[i]]) * torch.log(s[i, 3])
             for i in range(3)]
    expected = -sum(terms) / 3
    (expected_grad,) = torch.autograd.grad(expected, direct_logits)

    assert torch.allclose(loss, expected) and torch.allclose(grad, expected_grad)
    assert torch.allclose(sat.table[index], t)


def test_selective_warm_up_ignores_the_abstain_output():
    sat = SelectiveSAT(LABELS, 3, start_epoch=1)
    _started(sat, iteration=9)
    logits, targets, index = _batch(4)
    assert torch.equal(sat.loss(logits, targets, index), F.cross_entropy(logits[:, :3], targets))
    with pytest.raises(TicketlabError, match="4 outputs"):
        sat.loss(logits[:, :3], targets, index)


def test_confidence_is_one_minus_the_abstain_probability():
    logits = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 3.0]])
    e1, e3 = torch.tensor(1.0).exp(), torch.tensor(3.0).exp()
    expected = torch.stack([torch.tensor(2 / 3), (e1 + 1) / (e1 + 1 + e3)])
    assert torch.allclose(SelectiveSAT.confidence(logits), expected)


def test_state_round_trip_restores_the_table():
    for cls, columns in ((SelfAdaptiveTraining, 3), (SelectiveSAT, 4)):
        sat = cls(LABELS, 3, start_epoch=0)
        _started(sat, iteration=0)
        sat.loss(*_batch(columns))
        fresh = cls(LABELS, 3, start_epoch=0)
        fresh.load_state_dict(sat.state_dict())
        assert torch.equal(fresh.table, sat.table)
        with pytest.raises(TicketlabError, match="resume with"):
            cls(LABELS[:4], 3).load_state_dict(sat.state_dict())


def test_user_errors():
    with pytest.raises(TicketlabError, match="loss was called before training started"):
        SelfAdaptiveTraining(LABELS, 3).loss(*_batch(3))
    with pytest.raises(TicketlabError, match="check num_classes"):
        SelfAdaptiveTraining(LABELS, 2)
    with pytest.raises(TicketlabError, match="alpha"):
        SelfAdaptiveTraining(LABELS, 3, alpha=1.0)
    with pytest.raises(TicketlabError, match="training set has 4"):
        SelfAdaptiveTraining(LABELS, 3).on_start(SimpleNamespace(data=[None] * 4, device=torch.device("cpu")))


def _trainer(tmp_path, sat, *, hooks=()):
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment(crop_padding=1, flip=True))
    torch.manual_seed(0)
    return Trainer(TinyNet(), data, TrainConfig(epochs=2, batch_size=16, lr=0.05), hooks=[sat, *hooks],
                   loss_fn=sat.loss, checkpoint_dir=tmp_path, progress=False)


def test_sat_in_the_trainer_resumes_exactly(tmp_path):
    class Interrupt(Hook):
        def after_step(self, trainer, step):
            if trainer.iteration == 9:
                trainer.interrupt()

    labels = tiny_dataset().train_y
    reference = SelfAdaptiveTraining(labels, 4, start_epoch=1)
    _trainer(tmp_path / "ref", reference).fit()
    assert not torch.equal(reference.table, F.one_hot(labels, 4).float())
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "run", SelfAdaptiveTraining(labels, 4, start_epoch=1), hooks=[Interrupt()]).fit()
    resumed = SelfAdaptiveTraining(labels, 4, start_epoch=1)
    _trainer(tmp_path / "run", resumed).fit()
    assert torch.equal(resumed.table, reference.table)
