import json
import math

import pytest
import torch

from ticketlab.config import DataConfig
from ticketlab.errors import TicketlabError
from ticketlab.store import RunStore, read_tensors
from ticketlab.train import train

from helpers import tiny_dataset


def _train(tmp_path, **kw):
    ds = kw.pop("dataset", None) or tiny_dataset(n=200, channels=1, size=8)
    return train("lenet_300_100", ds, store=tmp_path, epochs=kw.pop("epochs", 4), batch_size=20, lr=0.003,
                 optimizer="adam", progress=False, **kw)


def test_noise_is_reported_and_test_labels_stay_clean(tmp_path):
    clean = _train(tmp_path)
    noisy = _train(tmp_path, data=DataConfig(noise="flip:0.4"))
    assert noisy.run_id != clean.run_id
    assert noisy.summary["noise_rate"] == pytest.approx(0.4, abs=0.01)
    assert "noise_rate" not in clean.summary


def test_sat_reports_corrections_and_exports_labels(tmp_path):
    result = _train(tmp_path, data=DataConfig(noise="flip:0.3"), loss="sat", sat_start=2, sat_alpha=0.6, epochs=8)
    s = result.summary
    labels = read_tensors(result.folder / "labels.safetensors")
    wrong = labels["given"] != labels["clean"]
    assert abs(float(wrong.float().mean()) - s["noise_rate"]) < 1e-6
    fixed = (labels["corrected"][wrong] == labels["clean"][wrong]).float().mean()
    assert s["corrected_fraction"] == pytest.approx(float(fixed), abs=1e-6)
    assert s["corrected_fraction"] > 0.3  # the blobs are easy: SAT fixes many of the flipped labels
    json.dumps(s)


def test_selective_sat_adds_an_abstain_output_and_a_coverage_table(tmp_path):
    result = _train(tmp_path, loss="sat-selective", sat_start=1, epochs=3)
    s = result.summary
    assert result.model.fc.out_features == 5  # 4 classes + abstain
    rows = s["coverage"]
    assert [r["target_coverage"] for r in rows][:3] == [1.0, 0.95, 0.9]
    assert rows[0]["threshold"] is None and all(0 <= r["selective_error"] <= 1 for r in rows)
    json.loads(json.dumps(s))
    assert open(s["coverage_plot"], "rb").read(4) == b"\x89PNG"
    assert 0 <= s["test_accuracy"] <= 1


def test_selective_training_accuracy_counts_class_answers_not_abstentions(tmp_path):
    """Train accuracy is judged on the K class outputs, as validation and test accuracy are: an abstention is
    no answer, not a wrong class."""
    from ticketlab.train.hooks import Hook

    seen = {}

    class LastEpoch(Hook):
        def identity(self) -> str:
            return ""

        def after_step(self, trainer, step) -> None:
            if step.epoch == trainer.cfg.epochs - 1:
                right = (step.logits[:, :4].argmax(1) == step.targets).sum().item()
                seen["right"], seen["n"] = seen.get("right", 0) + right, seen.get("n", 0) + len(step.targets)
                seen["abstained"] = seen.get("abstained", 0) + (step.logits.argmax(1) == 4).sum().item()

    result = _train(tmp_path, data=DataConfig(noise="flip:0.4"), loss="sat-selective", sat_start=2, epochs=8,
                    hooks=[LastEpoch()])
    assert seen["abstained"] > 0  # the case that was counted wrong
    assert result.history[-1]["train_accuracy"] == pytest.approx(seen["right"] / seen["n"], abs=1e-6)


def test_sat_start_must_lie_inside_training(tmp_path):
    with pytest.raises(TicketlabError, match="sat-start"):
        _train(tmp_path, loss="sat", sat_start=4, epochs=4)
    assert RunStore(tmp_path).list() == []


def test_records_are_stored_with_the_run(tmp_path):
    from ticketlab.config import ModelConfig, RunConfig
    from ticketlab.train import recipe_config
    from ticketlab.train.records import ExampleRecords
    from ticketlab.train.run import train_run

    ds = tiny_dataset(n=100, channels=1, size=8)
    cfg = RunConfig(data=DataConfig(dataset="tiny"), model=ModelConfig("lenet_300_100"),
                    train=recipe_config("lenet_300_100", epochs=2, batch_size=25))
    result = train_run(cfg, store=RunStore(tmp_path), dataset=ds, progress=False, records=True)
    records = ExampleRecords.load(result.folder / "records.safetensors")
    assert records.seen.all() and records.correct.shape == (2, 100)
    assert math.isclose(records.correct[-1].float().mean().item(), result.history[-1]["train_accuracy"], abs_tol=1e-6)
    plain = train_run(cfg, store=RunStore(tmp_path), dataset=ds, progress=False)
    assert plain.run_id != result.run_id
    assert torch.equal(plain.model.fc.weight, result.model.fc.weight)  # recording changes nothing


def test_records_with_drop_last_and_an_impossible_batch_are_user_errors_that_leave_nothing(tmp_path):
    from ticketlab.config import ModelConfig, RunConfig
    from ticketlab.train import recipe_config
    from ticketlab.train.run import train_run

    ds = tiny_dataset(n=100, channels=1, size=8)
    model = ModelConfig("lenet_300_100")
    dropping = RunConfig(data=DataConfig(dataset="tiny"), model=model,
                         train=recipe_config("lenet_300_100", epochs=2, batch_size=30, drop_last=True))
    with pytest.raises(TicketlabError, match="every example in every epoch.*--no-drop-last"):
        train_run(dropping, store=RunStore(tmp_path), dataset=ds, progress=False, records=True)
    too_big = RunConfig(data=DataConfig(dataset="tiny"), model=model,
                        train=recipe_config("lenet_300_100", epochs=2, batch_size=500, drop_last=True))
    with pytest.raises(TicketlabError, match="larger than the 100 training examples"):
        train_run(too_big, store=RunStore(tmp_path), dataset=ds, progress=False)
    assert RunStore(tmp_path).list() == []


def test_a_user_error_found_after_training_leaves_no_half_written_run(tmp_path):
    """Selective SAT's report splits the test predictions in two; one test image cannot be split."""
    ds = tiny_dataset(n=64, n_test=1, channels=1, size=8)
    with pytest.raises(TicketlabError, match="cannot be split"):
        train("lenet_300_100", ds, store=tmp_path, epochs=2, batch_size=16, lr=0.01, optimizer="adam",
              loss="sat-selective", sat_start=1, progress=False)
    assert RunStore(tmp_path).list() == []
