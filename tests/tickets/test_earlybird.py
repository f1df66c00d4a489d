import pytest
import torch
from torch import nn

from ticketlab.config import TrainConfig
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.errors import TicketlabError
from ticketlab.store.files import load_state, save_state
from ticketlab.tickets.earlybird import EarlyBird, mask_distance
from ticketlab.train import MaskHook, Trainer

from helpers import TinyNet, tiny_dataset


def test_mask_distance_counts_differences_over_the_first_masks_kept_entries():
    a = {"x": torch.tensor([[1, 1], [0, 0]], dtype=torch.bool), "y": torch.tensor([1, 0, 0, 1], dtype=torch.bool)}
    b = {"x": torch.tensor([[1, 0], [0, 1]], dtype=torch.bool), "y": torch.tensor([1, 0, 0, 0], dtype=torch.bool)}
    assert mask_distance(a, a) == 0.0
    assert mask_distance(a, b) == 3 / 4  # 3 differing entries, a keeps 4
    assert mask_distance(b, a) == 3 / 3  # b keeps 3
    with pytest.raises(TicketlabError, match="different layers"):
        mask_distance(a, {"x": a["x"]})
    with pytest.raises(TicketlabError, match="shapes"):
        mask_distance(a, {"x": a["x"], "y": a["y"][:3]})


# 20 weights, half pruned: swapping one kept weight for a pruned one moves the mask by 2/10 = 0.2
A = list(range(10))
B = [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]  # 0.2 from A and C
C = [0, 1, 2, 3, 4, 5, 6, 7, 10, 11]  # 0.4 from A
SCRIPT = [A, C, C, C, C, B, B, B, B, B, B, B]  # distances from epoch 2: .4 0 0 0 .2 0 0 0 0 0 0


class _FakeTrainer:
    def __init__(self):
        self.model = nn.Linear(20, 1, bias=False)
        self.stops = []

    def stop(self, reason):
        self.stops.append(reason)

    def show(self, kept):
        weights = torch.linspace(0.1, 0.0, 20)  # distinct, so no ties
        weights[kept] += 1.0
        with torch.no_grad():
            self.model.weight.copy_(weights.view(1, 20))


def _drive(hook, trainer, epochs):
    for epoch in epochs:
        trainer.show(SCRIPT[epoch])
        stopped_before = hook.stopped_epoch
        hook.on_epoch_end(trainer, epoch)
        if stopped_before is None and hook.stopped_epoch is not None:
            return


@pytest.mark.parametrize("threshold,stop_epoch", [(0.25, 7), (0.2, 11), (0.1, 11)])
def test_stops_at_the_first_epoch_whose_last_five_distances_are_below_threshold(threshold, stop_epoch):
    trainer = _FakeTrainer()
    hook = EarlyBird(["weight"], fraction=0.5, threshold=threshold)
    hook.on_start(trainer)
    for epoch in range(len(SCRIPT)):
        trainer.show(SCRIPT[epoch])
        hook.on_epoch_end(trainer, epoch)
        assert len(trainer.stops) == (epoch + 1 >= stop_epoch), epoch  # not before, and only once
    assert hook.stopped_epoch == stop_epoch
    assert hook.distances[:stop_epoch - 1] == pytest.approx([0.4, 0, 0, 0, 0.2, 0, 0, 0, 0, 0][:stop_epoch - 1])
    assert f"after epoch {stop_epoch}" in trainer.stops[0]
    assert torch.equal(hook.previous["weight"].flatten().nonzero().flatten(), torch.tensor(SCRIPT[stop_epoch - 1]))


def test_window_sets_how_many_calm_epochs_are_needed():
    trainer = _FakeTrainer()
    hook = EarlyBird(["weight"], fraction=0.5, threshold=0.1, window=2)
    hook.on_start(trainer)
    _drive(hook, trainer, range(len(SCRIPT)))
    assert hook.stopped_epoch == 4  # distances .4 0 0: the 2nd and 3rd are calm


def test_state_round_trip_continues_exactly(tmp_path):
    reference = EarlyBird(["weight"], fraction=0.5, threshold=0.25)
    trainer = _FakeTrainer()
    reference.on_start(trainer)
    _drive(reference, trainer, range(len(SCRIPT)))

    first = EarlyBird(["weight"], fraction=0.5, threshold=0.25)
    save_state(tmp_path / "empty.safetensors", {"hook": first.state_dict()})  # before any epoch
    first.load_state_dict(load_state(tmp_path / "empty.safetensors")["hook"])
    _drive(first, trainer, range(4))
    save_state(tmp_path / "state.safetensors", {"hook": first.state_dict()})
    resumed = EarlyBird(["weight"], fraction=0.5, threshold=0.25)
    resumed.load_state_dict(load_state(tmp_path / "state.safetensors")["hook"])
    _drive(resumed, trainer, range(4, len(SCRIPT)))
    assert resumed.stopped_epoch == reference.stopped_epoch == 7
    assert resumed.distances == reference.distances


def test_settings_that_cannot_work_are_user_errors():
    with pytest.raises(TicketlabError, match="threshold"):
        EarlyBird(["weight"], 0.5, threshold=0.0)
    with pytest.raises(TicketlabError, match="window"):
        EarlyBird(["weight"], 0.5, window=0)
    with pytest.raises(TicketlabError, match="fraction"):
        EarlyBird(["weight"], 1.0)
    with pytest.raises(TicketlabError, match="not parameters of the model"):
        EarlyBird(["conv.weight"], 0.5).on_start(_FakeTrainer())
    with pytest.raises(TicketlabError, match="layer_fractions"):
        EarlyBird(["weight"], 0.5, layer_fractions={"weight": 0.1}).on_start(_FakeTrainer())


def _trainer(hooks, epochs=5):
    ds = tiny_dataset()
    data = DeviceData(ds.train_x, ds.train_y, ds.mean, ds.std, "cpu", Augment(crop_padding=1, flip=True))
    torch.manual_seed(0)
    return Trainer(TinyNet(), data, TrainConfig(epochs=epochs, batch_size=16, lr=0.05), hooks=hooks, progress=False)


NAMES = ["conv.weight", "fc.weight"]


def test_a_loose_threshold_stops_a_real_run_early():
    hook = EarlyBird(NAMES, fraction=0.2, threshold=1.0, window=2)  # distances are at most 0.5 here
    trainer = _trainer([hook])
    result = trainer.fit()
    assert hook.stopped_epoch == 3 and len(hook.distances) == 2
    assert "after epoch 3" in result.stopped_early
    assert result.iterations == 3 * trainer.steps_per_epoch < trainer.total_steps
    assert len(result.history) == 3


def test_a_tiny_threshold_runs_to_the_end():
    hook = EarlyBird(NAMES, fraction=0.2, threshold=1e-12, window=1)
    trainer = _trainer([hook], epochs=4)
    result = trainer.fit()
    assert result.stopped_early is None and hook.stopped_epoch is None
    assert result.iterations == trainer.total_steps and len(hook.distances) == 3


def test_with_current_masks_only_unpruned_weights_compete():
    shapes = {n: p.shape for n, p in TinyNet().named_parameters()}
    g = torch.Generator().manual_seed(0)
    current = {n: torch.rand(shapes[n], generator=g) < 0.5 for n in NAMES}
    hook = EarlyBird(NAMES, fraction=0.2, current=current, threshold=1e-12)
    _trainer([MaskHook(current), hook], epochs=2).fit()
    for name in NAMES:
        assert not (hook.previous[name] & ~current[name]).any()
    kept = sum(int(hook.previous[n].sum()) for n in NAMES)
    assert kept == round(0.8 * sum(int(current[n].sum()) for n in NAMES))


def test_a_structured_study_watches_the_structured_mask_settle():
    trainer = _FakeTrainer()
    seen = []

    def first_half_of_the_row(mask, model):  # a stand-in structure: the mask's kept count, as a prefix
        seen.append(model)
        out = torch.zeros_like(mask["weight"]).flatten()
        out[: int(mask["weight"].sum())] = True
        return {"weight": out.view_as(mask["weight"])}

    hook = EarlyBird(["weight"], fraction=0.5, threshold=0.1, window=2, structure=first_half_of_the_row)
    _drive(hook, trainer, range(3))  # A, C, C: the unstructured masks move by 0.4, the structured ones not at all
    assert hook.distances == [0.0, 0.0] and hook.stopped_epoch == 3
    assert seen == [trainer.model] * 3 and hook.previous["weight"].flatten()[:10].all()
