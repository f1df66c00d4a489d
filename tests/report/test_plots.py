import json

from ticketlab.report.plots import plot_study, plot_tradeoff, tradeoff_series


def _summary():
    arm = lambda mean: {"mean": mean, "std": 0.01}  # noqa: E731
    levels = [
        {"density": 0.69, "speedup_cpu": 1.3, "ticket": arm(0.83), "finetune": arm(0.86), "reinit": arm(0.80),
         "random": arm(0.78), "scratch": arm(0.85)},
        {"density": 0.47, "speedup_cpu": None, "ticket": arm(0.80), "finetune": arm(0.84), "reinit": arm(0.77),
         "random": arm(0.75), "scratch": arm(0.82)},
    ]
    return {"model": "m", "dataset": "d", "structure": "channel", "dense": arm(0.85), "levels": levels}


def test_arms_on_the_tickets_masks_share_its_measured_speed_up():
    series = tradeoff_series(_summary())
    # random pruning draws other masks, whose speed was not measured; a level without a measurement is left out
    assert set(series) == {"ticket", "finetune", "reinit", "scratch"}
    assert series["finetune"] == [(1.3, 0.86, 0.01)]
    assert series["ticket"] == [(1.3, 0.83, 0.01)]


def test_a_study_without_baselines_plots_the_ticket_alone(tmp_path):
    summary = json.loads(json.dumps(_summary()))
    for level in summary["levels"]:
        for arm in ("finetune", "reinit", "random", "scratch"):
            del level[arm]
    assert set(tradeoff_series(summary)) == {"ticket"}
    assert plot_tradeoff(summary, tmp_path / "speed.png").read_bytes()[:4] == b"\x89PNG"


def test_the_study_plot_draws_every_arm_the_study_ran(tmp_path, monkeypatch):
    import matplotlib.axes

    drawn = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, *a, **kw: drawn.append(kw["label"]) or real(self, *a, **kw))
    summary = _summary()
    for level in summary["levels"]:
        level.update(winning=False, mine=level["ticket"])  # a baseline the user registered
    assert plot_study(summary, tmp_path / "acc.png").read_bytes()[:4] == b"\x89PNG"
    assert drawn == ["ticket", "finetune", "reinit", "random", "scratch", "mine"]


def test_one_level_plots_sparser_to_the_right_like_many(tmp_path, monkeypatch):
    from ticketlab.report import plots

    axes = []
    real = plots.new_axes
    monkeypatch.setattr(plots, "new_axes", lambda *a: (lambda fa: axes.append(fa[1]) or fa)(real(*a)))
    summary = _summary()
    for level in summary["levels"]:
        level["winning"] = False
    plot_study(summary, tmp_path / "two.png")
    plot_study({**summary, "levels": summary["levels"][:1]}, tmp_path / "one.png")
    assert [ax.xaxis_inverted() for ax in axes] == [True, True]


def test_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook user's backend must survive a study's plots (pyplot's `use("Agg")` switched it)."""
    import subprocess
    import sys

    script = (
        "import matplotlib; matplotlib.use('svg'); import matplotlib.pyplot\n"
        "from ticketlab.report.plots import new_axes, save_png\n"
        "import ticketlab.report.selective_plot\n"
        "fig, ax = new_axes(2, 2); ax.plot([0, 1], [1, 0])\n"
        f"save_png(fig, {str(tmp_path / 'a.png')!r})\n"
        "print(matplotlib.get_backend())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["svg"] and (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"


def test_a_failed_write_is_a_clear_error(tmp_path):
    import pytest

    from ticketlab.errors import TicketlabError

    summary = _summary()
    for level in summary["levels"]:
        level["winning"] = False
    with pytest.raises((TicketlabError, OSError)):
        plot_study(summary, tmp_path)  # a folder, not a file
