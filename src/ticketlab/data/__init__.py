"""Datasets: official formats, a user's own arrays, and a small MNIST subset shipped with the package.

Importing this package registers the built-in datasets.
"""

from ticketlab.data import bundled, cifar, mnist, svhn  # noqa: F401  (registers the built-in datasets)
from ticketlab.data.augment import Augment
from ticketlab.data.batches import DeviceData
from ticketlab.data.catalog import DATASETS, DatasetSpec, list_datasets, load_dataset, register_dataset
from ticketlab.data.dataset import ImageDataset
from ticketlab.data.locate import search_roots
from ticketlab.data.split import train_validation_split

__all__ = [
    "DATASETS",
    "Augment",
    "DatasetSpec",
    "DeviceData",
    "ImageDataset",
    "list_datasets",
    "load_dataset",
    "register_dataset",
    "search_roots",
    "train_validation_split",
]
