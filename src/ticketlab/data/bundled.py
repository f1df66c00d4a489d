"""Data shipped inside the package, so the first command works with no network and no set-up."""

from __future__ import annotations

from pathlib import Path

from ticketlab.data.arrays import load_npz
from ticketlab.data.catalog import register_dataset
from ticketlab.data.dataset import ImageDataset
from ticketlab.errors import TicketlabError

MNIST_SUBSET = Path(__file__).parent / "assets" / "mnist_subset.npz"


@register_dataset("mnist_subset")
def load_mnist_subset(data_dir: Path | None, download: bool) -> ImageDataset:
    """10,000 train / 2,000 test MNIST images, class-balanced (see assets/README.md).

    ``data_dir`` and ``download`` are ignored: the file is part of the package.
    """
    if not MNIST_SUBSET.is_file():
        raise TicketlabError(
            f"the bundled file {MNIST_SUBSET} is missing from this installation; reinstall ticketlab "
            "(pip install --force-reinstall ticketlab) or load the full dataset 'mnist' instead"
        )
    return load_npz(MNIST_SUBSET, name="mnist_subset")
