"""Shared fixtures: where the real datasets are, a skip when they are not, and exact CUDA arithmetic."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# The real-data folder lent to this project's machines; a user's machine has none,
# so tests that need it skip. TICKETLAB_TEST_DATA overrides the location.
_SHARED = Path(os.environ.get("TICKETLAB_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not _SHARED.is_dir():
        pytest.skip(f"real datasets not found at {_SHARED} (set TICKETLAB_TEST_DATA)")
    return _SHARED


@pytest.fixture
def exact_cuda():
    """fp32 convolutions without TF32 and deterministic cuDNN algorithms, restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic, torch.backends.cuda.matmul.allow_tf32 = saved


def need(shared: Path, *relative: str) -> None:
    for rel in relative:
        if not (shared / rel).exists():
            pytest.skip(f"{shared / rel} is absent")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip with a reason on a machine without CUDA (CI, most laptops)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run `pytest -m gpu` on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
