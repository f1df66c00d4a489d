import math

import pytest

from ticketlab.config import TrainConfig
from ticketlab.errors import TicketlabError
from ticketlab.train.optim import lr_factor


def test_step_schedule_drops_at_milestones():
    cfg = TrainConfig(epochs=10, schedule="step", milestones=(4, 8), gamma=0.1)
    assert lr_factor(cfg, 0, 10) == 1.0
    assert lr_factor(cfg, 39, 10) == 1.0
    assert lr_factor(cfg, 40, 10) == pytest.approx(0.1)
    assert lr_factor(cfg, 80, 10) == pytest.approx(0.01)


def test_cosine_and_linear_with_warmup():
    cos = TrainConfig(epochs=10, schedule="cosine", warmup_epochs=1)
    assert lr_factor(cos, 0, 10) == pytest.approx(0.1)
    assert lr_factor(cos, 9, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 10, 10) == pytest.approx(1.0)
    assert lr_factor(cos, 55, 10) == pytest.approx(0.5)
    lin = TrainConfig(epochs=10, schedule="linear", warmup_epochs=2)
    assert lr_factor(lin, 20, 10) == pytest.approx(1.0)
    assert lr_factor(lin, 60, 10) == pytest.approx(0.5)
    assert lr_factor(lin, 99, 10) == pytest.approx(1 / 80)
    assert all(math.isfinite(lr_factor(lin, i, 10)) for i in range(100))


@pytest.mark.parametrize("kwargs,match", [
    (dict(epochs=0), "epochs"), (dict(lr=-1.0), "lr"), (dict(optimizer="lbfgs"), "optimizer"),
    (dict(schedule="step"), "milestones"), (dict(schedule="step", milestones=(20,)), "milestones"),
    (dict(warmup_epochs=20), "warmup"), (dict(batch_size=0), "batch"), (dict(momentum=1.5), "momentum"),
])
def test_impossible_settings_are_user_errors(kwargs, match):
    with pytest.raises(TicketlabError, match=match):
        TrainConfig(epochs=kwargs.pop("epochs", 10), **kwargs).validate()
