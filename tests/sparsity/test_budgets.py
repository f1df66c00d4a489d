import math

import pytest

from ticketlab.errors import TicketlabError
from ticketlab.sparsity import BUDGETS, er, erk, uniform

SHAPES = {
    "stem.weight": (16, 3, 3, 3),
    "a.weight": (32, 16, 3, 3),
    "b.weight": (64, 32, 3, 3),
    "b2.weight": (64, 64, 3, 3),
    "fc.weight": (10, 64),
}
N = {n: math.prod(s) for n, s in SHAPES.items()}


def kept(densities):
    return sum(densities[n] * N[n] for n in SHAPES)


@pytest.mark.parametrize("budget", [erk, er, uniform])
@pytest.mark.parametrize("d", [0.01, 0.05, 0.2, 0.5, 0.9, 1.0])
def test_budgets_meet_the_target_exactly(budget, d):
    densities = budget(SHAPES, d)
    assert set(densities) == set(SHAPES)
    assert all(0.0 < v <= 1.0 for v in densities.values())
    assert kept(densities) == pytest.approx(d * sum(N.values()), rel=1e-6)


def test_erk_caps_small_layers_and_keeps_raw_ratios_elsewhere():
    densities = erk(SHAPES, 0.3)
    raw = {n: sum(s) / math.prod(s) for n, s in SHAPES.items()}
    capped = [n for n, v in densities.items() if v == 1.0]
    assert "stem.weight" in capped and "fc.weight" in capped
    free = [n for n in SHAPES if n not in capped]
    assert len(free) >= 2
    for n in free:
        assert densities[n] < 1.0
        assert densities[n] / densities[free[0]] == pytest.approx(raw[n] / raw[free[0]], rel=1e-12)


def test_er_ignores_the_kernel():
    densities = er(SHAPES, 0.05)
    raw = {n: (s[0] + s[1]) / (s[0] * s[1]) for n, s in SHAPES.items()}
    free = [n for n, v in densities.items() if v < 1.0]
    assert len(free) >= 3
    for n in free:
        assert densities[n] / densities[free[0]] == pytest.approx(raw[n] / raw[free[0]], rel=1e-12)


def test_erk_hand_computed():
    # ε = 0.5·10016 / (0.5·16 + 0.02·10000) ≈ 24 makes the small layer 12 > 1: capped;
    # again over the big layer: ε = (5008 − 16) / 200 = 24.96, density 0.02·24.96 = 0.4992.
    densities = erk({"small": (4, 4), "big": (100, 100)}, 0.5)
    assert densities["small"] == 1.0
    assert densities["big"] == pytest.approx(0.4992, rel=1e-12)


def test_uniform_and_dense():
    assert uniform(SHAPES, 0.3) == {n: 0.3 for n in SHAPES}
    assert erk(SHAPES, 1.0) == {n: 1.0 for n in SHAPES}


@pytest.mark.parametrize("d", [0.0, -0.1, 1.5])
@pytest.mark.parametrize("name", ["uniform", "er", "erk", "global"])
def test_density_outside_unit_interval_is_a_user_error(name, d):
    with pytest.raises(TicketlabError, match=r"density must be in \(0, 1\]"):
        BUDGETS.get(name)(SHAPES, d)


def test_registry_and_shape_errors():
    assert BUDGETS.names() == ["er", "erk", "global", "uniform"]
    with pytest.raises(TicketlabError, match="erk"):
        BUDGETS.get("erdos")
    with pytest.raises(TicketlabError, match="bias"):
        erk({"bias": (10,)}, 0.5)
