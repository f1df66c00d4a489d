"""Noisy training labels: synthetic noise at a chosen rate, or a real noisy label set from a file.

Two synthetic conventions exist in the noisy-label literature and give different error rates at the
same nominal rate, so both are exposed under explicit names:

- ``uniform``: a fraction r of labels is redrawn from ALL K classes, so about r(K-1)/K end up wrong
  (the self-adaptive training paper's convention);
- ``flip``: a fraction r of labels is changed to a DIFFERENT class, so exactly r end up wrong.

``asymmetric`` mimics confusions between similar CIFAR-10 classes; ``file`` reads human label sets such
as CIFAR-10N. Every generator returns a new int64 tensor and leaves its input untouched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ticketlab.data.arrays import read_npz
from ticketlab.errors import TicketlabError

NOISE_KINDS = ("uniform", "flip", "asymmetric", "file")
_SYNTAX = "write uniform:RATE, flip:RATE, asymmetric:RATE (RATE a fraction in [0, 1], e.g. 0.4) or file:PATH.npz:KEY"

# CIFAR-10 class order: 0 airplane 1 automobile 2 bird 3 cat 4 deer 5 dog 6 frog 7 horse 8 ship 9 truck.
# truck->automobile, bird->airplane, cat<->dog, deer->horse: confusions between look-alike classes.
CIFAR10_ASYMMETRIC: dict[int, int] = {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass(frozen=True)
class NoiseSpec:
    """Which noise to add: `rate` for the synthetic kinds, `path` and `key` (the label array) for "file"."""

    kind: str
    rate: float = 0.0
    path: str = ""
    key: str = ""

    def __post_init__(self) -> None:
        if self.kind not in NOISE_KINDS:
            raise TicketlabError(
                f"unknown label noise kind {self.kind!r}; the kinds are {', '.join(NOISE_KINDS)}: {_SYNTAX}"
            )
        _check_rate(self.rate)
        if self.kind == "file" and not (self.path and self.key):
            raise TicketlabError(f"file noise needs a path and the name of a label array; {_SYNTAX}")


def parse_noise(text: str) -> NoiseSpec:
    """"uniform:0.4", "flip:0.2", "asymmetric:0.4" or "file:/path/c10n.npz:worse_label" as a NoiseSpec."""
    kind, sep, rest = text.strip().partition(":")
    if kind not in NOISE_KINDS:
        raise TicketlabError(
            f"unknown label noise kind {kind!r} in {text!r}; the kinds are {', '.join(NOISE_KINDS)}: {_SYNTAX}"
        )
    if not sep or not rest:
        raise TicketlabError(
            f"label noise {text!r} lacks its {'path and key' if kind == 'file' else 'rate'}; {_SYNTAX}"
        )
    if kind == "file":
        path, sep, key = rest.rpartition(":")  # the key is last, so a path may hold colons (C:\...)
        if not sep or not path or not key:
            raise TicketlabError(f"label noise {text!r} needs both a path and a key; {_SYNTAX}")
        return NoiseSpec("file", path=path, key=key)
    try:
        rate = float(rest)
    except ValueError:
        raise TicketlabError(f"label noise rate {rest!r} in {text!r} is not a number; {_SYNTAX}") from None
    return NoiseSpec(kind, rate=rate)


def canonical_noise(text: str) -> str:
    """One spelling per setting ("uniform:.40" is "uniform:0.4"), so equal settings share run ids; text that
    does not parse is left as it is, for `parse_noise` to refuse where the noise is drawn."""
    try:
        spec = parse_noise(text)
    except TicketlabError:
        return text
    return f"file:{spec.path}:{spec.key}" if spec.kind == "file" else f"{spec.kind}:{spec.rate!r}"


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:
        raise TicketlabError(f"label noise rate must be a fraction in [0, 1] (0.4 for 40%), got {rate}")


def _as_labels(labels: torch.Tensor) -> torch.Tensor:
    """A CPU int64 copy of 1-D integer labels (the generators draw on the CPU)."""
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TicketlabError(
            f"labels must be a 1-D integer tensor of class ids, got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    return labels.detach().to("cpu", torch.int64).clone()


def _check_range(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise TicketlabError(
            f"labels range over {int(labels.min())}..{int(labels.max())} but the dataset has {num_classes} classes; "
            f"labels must be 0..{num_classes - 1}"
        )
    return labels


def _chosen(n: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Exactly round(rate·n) distinct examples, uniformly at random: the realised rate has no sampling error."""
    return torch.randperm(n, generator=generator)[: round(rate * n)]


def uniform_noise(labels: torch.Tensor, num_classes: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Redraw the labels of round(rate·N) random examples uniformly from all K classes (may keep the true one)."""
    _check_rate(rate)
    out = _check_range(_as_labels(labels), num_classes)
    idx = _chosen(len(out), rate, generator)
    out[idx] = torch.randint(num_classes, (len(idx),), generator=generator)
    return out.to(labels.device)


def flip_noise(labels: torch.Tensor, num_classes: int, rate: float, generator: torch.Generator) -> torch.Tensor:
    """Change the labels of round(rate·N) random examples to a uniformly drawn different class."""
    _check_rate(rate)
    if num_classes < 2:
        raise TicketlabError(f"flip noise needs at least 2 classes to flip to, the dataset has {num_classes}")
    out = _check_range(_as_labels(labels), num_classes)
    idx = _chosen(len(out), rate, generator)
    # an offset in 1..K-1 reaches every other class exactly once, never the true one
    out[idx] = (out[idx] + torch.randint(1, num_classes, (len(idx),), generator=generator)) % num_classes
    return out.to(labels.device)


def asymmetric_noise(
    labels: torch.Tensor, rate: float, generator: torch.Generator, pairs: dict[int, int] = CIFAR10_ASYMMETRIC
) -> torch.Tensor:
    """Each example of a source class in `pairs` moves to its target with probability `rate`, independently.

    Classes that are no source never change. One uniform number is drawn per example, whatever its class,
    so a seed picks the same coins for any labels; a swap (cat<->dog) reads the original labels, so an
    example moves at most once.
    """
    _check_rate(rate)
    out = _as_labels(labels)
    if pairs is CIFAR10_ASYMMETRIC and len(out) and not 0 <= int(out.min()) <= int(out.max()) < 10:
        raise TicketlabError(
            f"asymmetric noise is defined for CIFAR-10 (labels 0..9) but the labels range over "
            f"{int(out.min())}..{int(out.max())}; use uniform or flip noise, or pass your own source->target pairs"
        )
    original = out.clone()
    coin = torch.rand(len(out), generator=generator) < rate
    for source, target in pairs.items():
        out[coin & (original == source)] = target
    return out.to(labels.device)


def labels_from_file(path: str | Path, key: str, n: int, num_classes: int) -> torch.Tensor:
    """Array `key` of a .npz (read without unpickling): n integer labels in the training set's order."""
    path = Path(path)
    if not path.is_file():
        raise TicketlabError(f"no label file at {path}; give the path of a .npz of label arrays")
    if path.suffix in (".pt", ".pth", ".pkl", ".pickle"):
        converted = path.with_suffix(".npz")
        raise TicketlabError(
            f"{path} is a pickle and ticketlab never unpickles (a pickle can run any code); if you trust the file, "
            f"convert it yourself in Python: import numpy, torch; d = torch.load({str(path)!r}, weights_only=False); "
            f"numpy.savez({str(converted)!r}, **{{k: numpy.asarray(v) for k, v in d.items()}}) and give {converted}"
        )
    if path.suffix != ".npz":
        raise TicketlabError(f"{path} is not a .npz; save the label arrays with numpy.savez(path, name=labels, ...)")
    arrays = read_npz(path, "save the label arrays with numpy.savez(path, name=labels, ...)")
    if key not in arrays:
        raise TicketlabError(f"{path} has no label array {key!r}; it has {', '.join(sorted(arrays)) or 'none'}: "
                             "name one of them after the last colon")
    array = arrays[key]
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise TicketlabError(
            f"{path}: {key} must be a 1-D array of integer labels, got {array.dtype} of shape {array.shape}"
        )
    if len(array) != n:
        raise TicketlabError(
            f"{path}: {key} has {len(array)} labels but the training set has {n}; the file must hold one label per "
            "training example, in the training set's order (CIFAR-10N: 50,000 labels in CIFAR-10 training order)"
        )
    if n and not 0 <= int(array.min()) <= int(array.max()) < num_classes:
        raise TicketlabError(
            f"{path}: {key} has labels {int(array.min())}..{int(array.max())} but the dataset has {num_classes} "
            f"classes; the labels must be 0..{num_classes - 1}, for the same dataset"
        )
    return torch.from_numpy(array.astype(np.int64))


def add_label_noise(
    labels: torch.Tensor, num_classes: int, spec: NoiseSpec, seed: int, classes: Sequence[str] | None = None
) -> torch.Tensor:
    """Noisy copy of `labels` as `spec` asks; the same seed always gives the same labels.

    `classes` (the dataset's class names) lets asymmetric noise refuse a 10-class dataset that is
    not CIFAR-10, such as MNIST, whose digits its class pairs would confuse arbitrarily.
    """
    if not 0 <= seed < 2**63:
        raise TicketlabError(f"--noise-seed must be a whole number in [0, 2**63), got {seed}")
    generator = torch.Generator().manual_seed(seed)
    if spec.kind == "uniform":
        return uniform_noise(labels, num_classes, spec.rate, generator)
    if spec.kind == "flip":
        return flip_noise(labels, num_classes, spec.rate, generator)
    if spec.kind == "asymmetric":
        if num_classes != 10:
            raise TicketlabError(
                f"asymmetric noise is defined for CIFAR-10 (10 classes), this dataset has {num_classes}; "
                "use uniform or flip noise"
            )
        if classes is not None and tuple(classes) != CIFAR10_CLASSES:
            raise TicketlabError(
                f"asymmetric noise swaps look-alike CIFAR-10 classes (truck->automobile, cat<->dog, ...), but this "
                f"dataset's classes are {', '.join(map(str, classes))}; use uniform or flip noise"
            )
        return asymmetric_noise(labels, spec.rate, generator)
    _check_range(_as_labels(labels), num_classes)
    return labels_from_file(spec.path, spec.key, len(labels), num_classes).to(labels.device)


def noise_file_digest(text: str) -> str:
    """The content hash of `file:` noise's label file ("" for other noise), for the run's identity: by its
    path alone, a run would be reused after the file was rewritten with other labels."""
    spec = parse_noise(text)
    if spec.kind != "file":
        return ""
    try:
        return hashlib.sha256(Path(spec.path).read_bytes()).hexdigest()[:16]
    except OSError:  # reading the labels reports it
        return ""


def noise_rate(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """Fraction of labels that differ (0.0 for no labels)."""
    if clean.shape != noisy.shape:
        raise TicketlabError(
            f"clean labels have shape {tuple(clean.shape)}, noisy ones {tuple(noisy.shape)}; compare the same examples"
        )
    return (clean != noisy).float().mean().item() if clean.numel() else 0.0
