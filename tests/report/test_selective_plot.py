"""The coverage-risk figure is written as a PNG, in one atomic step."""

from __future__ import annotations

import torch

from ticketlab.report.selective_plot import plot_coverage_risk
from ticketlab.robust.selective import coverage_table, risk_coverage_curve

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_writes_a_png_with_curves_and_table(tmp_path):
    g = torch.Generator().manual_seed(0)
    conf, correct = torch.rand(60, generator=g), torch.rand(60, generator=g) < 0.8
    curves = {"sat": risk_coverage_curve(conf, correct), "softmax": risk_coverage_curve(-conf, correct)}
    path = plot_coverage_risk(
        curves, tmp_path / "figs" / "coverage.png", table=coverage_table(conf, correct), title="t"
    )
    assert path == tmp_path / "figs" / "coverage.png"
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert [p.name for p in path.parent.iterdir()] == ["coverage.png"]  # no temporary file left behind


def test_replaces_an_existing_file(tmp_path):
    path = tmp_path / "coverage.png"
    path.write_bytes(b"old")
    curve = risk_coverage_curve(torch.tensor([0.9, 0.1]), torch.tensor([True, False]))
    plot_coverage_risk({"only": curve}, str(path))
    assert path.read_bytes()[:8] == PNG_MAGIC
