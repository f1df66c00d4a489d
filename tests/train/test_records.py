import pytest
import torch
import torch.nn.functional as F

from ticketlab.config import TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.errors import TicketlabError
from ticketlab.train import Hook, Step, Trainer
from ticketlab.train.records import (
    ExampleRecords,
    forgetting_events,
    hard_to_memorise,
    never_learned,
)

from helpers import InterruptAt, TinyNet, tiny_dataset

# columns are examples, rows epochs
CORRECT = torch.tensor([
    [1, 1, 0, 1, 0, 1, 0],
    [0, 1, 0, 1, 1, 0, 1],
    [1, 0, 0, 1, 1, 1, 0],
    [0, 1, 0, 0, 1, 0, 0],
], dtype=torch.bool)
SEEN = torch.tensor([
    [1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 0, 0],
    [1, 1, 1, 1, 1, 1, 1],
    [1, 1, 1, 1, 1, 1, 1],
], dtype=torch.bool)


def test_forgetting_events_count_correct_to_incorrect_between_seen_epochs():
    # example 5 is 1, (unseen), 1, 0: one event, not two; example 6 is correct only in an unseen epoch
    assert forgetting_events(CORRECT, SEEN).tolist() == [2, 1, 0, 1, 0, 1, 0]
    assert forgetting_events(CORRECT).tolist() == [2, 1, 0, 1, 0, 2, 1]
    assert forgetting_events(CORRECT).dtype == torch.long


def test_never_learned_and_hard_to_memorise():
    assert never_learned(CORRECT, SEEN).tolist() == [False, False, True, False, False, False, True]
    assert never_learned(CORRECT).tolist() == [False, False, True, False, False, False, False]
    assert hard_to_memorise(CORRECT, SEEN).tolist() == [True, True, True, True, False, True, True]


def test_history_shape_mismatch_is_a_user_error():
    with pytest.raises(TicketlabError, match="seen has shape"):
        forgetting_events(CORRECT, SEEN[:, :3])
    with pytest.raises(TicketlabError, match=r"\[epochs, examples\]"):
        never_learned(CORRECT[0])


def _step(epoch, index, logits, targets):
    return Step(0, epoch, torch.empty(0), torch.tensor(targets), torch.tensor(index), logits, torch.tensor(0.0))


def test_probability_ema_starts_at_the_first_visit():
    records = ExampleRecords(num_examples=3, num_classes=2, epochs=2, ema=0.75)
    a, b, c = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 3.0]]), torch.tensor([[0.5, -1.0]])
    records.after_step(None, _step(0, [0, 2], a, [0, 0]))
    records.after_step(None, _step(1, [2], b, [1]))
    records.after_step(None, _step(1, [0], c, [1]))
    pa, pb, pc = a.softmax(1), b.softmax(1), c.softmax(1)
    assert torch.allclose(records.probs[0], 0.75 * pa[0] + 0.25 * pc[0])
    assert torch.allclose(records.probs[2], 0.75 * pa[1] + 0.25 * pb[0])
    assert torch.equal(records.probs[1], torch.zeros(2))  # never visited
    assert records.seen.tolist() == [[True, False, True], [True, False, True]]
    assert records.correct.tolist() == [[True, False, False], [False, False, True]]
    assert torch.allclose(records.loss[1, 0], F.cross_entropy(c, torch.tensor([1])))


def _trainer(tmp_path=None, *, hooks=(), epochs=3):
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment(crop_padding=1, flip=True))
    cfg = TrainConfig(epochs=epochs, batch_size=16, lr=0.05, label_smoothing=0.1, warmup_epochs=0.5)
    torch.manual_seed(0)
    return Trainer(TinyNet(), data, cfg, hooks=hooks, checkpoint_dir=tmp_path, progress=False)


class _Logits(Hook):
    def __init__(self):
        self.steps = []

    def after_step(self, trainer, step):
        self.steps.append((step.epoch, step.index.clone(), step.targets.clone(), step.logits.clone()))


def test_records_match_what_each_step_saw():
    records, seen = ExampleRecords(96, 4, epochs=3), _Logits()
    _trainer(hooks=[records, seen]).fit()
    probs = torch.zeros(96, 4)
    for epoch, index, targets, logits in seen.steps:
        p = logits.softmax(1)
        probs[index] = p if epoch == 0 else 0.9 * probs[index] + 0.1 * p
        assert torch.equal(records.correct[epoch, index], logits.argmax(1) == targets)
        # no label smoothing, whatever the run's loss uses
        assert torch.allclose(records.loss[epoch, index], F.cross_entropy(logits, targets, reduction="none"))
    assert records.seen.all()
    assert torch.allclose(records.probs, probs)


def test_epoch_accuracy_agrees_with_the_trainer():
    records = ExampleRecords(96, 4, epochs=3)
    result = _trainer(hooks=[records]).fit()
    for epoch, row in enumerate(result.history):
        assert records.correct[epoch].float().mean().item() == pytest.approx(row["train_accuracy"])


@pytest.mark.parametrize("stop_at", [6, 9])
def test_resumed_run_records_what_an_uninterrupted_one_does(tmp_path, stop_at):
    reference = ExampleRecords(96, 4, epochs=3)
    _trainer(tmp_path / "ref", hooks=[reference]).fit()
    with pytest.raises(KeyboardInterrupt):
        _trainer(tmp_path / "run", hooks=[ExampleRecords(96, 4, epochs=3), InterruptAt(stop_at)]).fit()
    resumed = ExampleRecords(96, 4, epochs=3)
    _trainer(tmp_path / "run", hooks=[resumed]).fit()
    for name, value in reference.state_dict().items():
        assert torch.equal(getattr(resumed, name), value), name


def test_save_and_load_round_trip(tmp_path):
    records = ExampleRecords(96, 4, epochs=2, ema=0.8)
    _trainer(hooks=[records], epochs=2).fit()
    records.save(tmp_path / "records.safetensors")
    back = ExampleRecords.load(tmp_path / "records.safetensors")
    assert back.ema == 0.8 and (back.epochs, back.num_examples, back.num_classes) == (2, 96, 4)
    for name, value in records.state_dict().items():
        assert torch.equal(getattr(back, name), value), name
    with pytest.raises(TicketlabError, match="no records file"):
        ExampleRecords.load(tmp_path / "nope.safetensors")


def test_records_that_do_not_fit_the_run_are_user_errors():
    with pytest.raises(TicketlabError, match="num_examples=len"):
        _trainer(hooks=[ExampleRecords(95, 4, epochs=3)]).fit()
    with pytest.raises(TicketlabError, match="epochs=the run's epochs"):
        _trainer(hooks=[ExampleRecords(96, 4, epochs=2)]).fit()
    with pytest.raises(TicketlabError, match="num_classes"):
        _trainer(hooks=[ExampleRecords(96, 3, epochs=3)]).fit()
    with pytest.raises(TicketlabError, match="resume with"):
        ExampleRecords(96, 4, epochs=3).load_state_dict(ExampleRecords(96, 4, epochs=2).state_dict())
    with pytest.raises(TicketlabError, match="ema"):
        ExampleRecords(96, 4, epochs=3, ema=1.0)
