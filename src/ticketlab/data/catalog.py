"""Dataset names -> data, with one predictable look-up and one helpful error.

A registry entry is either a :class:`DatasetSpec` (a format ticketlab knows how to find,
download and parse) or a plain loader function a user registered with
``@register_dataset(name)``, called as ``loader(data_dir, download)``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ticketlab.data.arrays import load_npz
from ticketlab.data.dataset import ImageDataset
from ticketlab.data.locate import DownloadUnavailable, extract_tar, md5_of, search_roots
from ticketlab.data.locate import download as download_file
from ticketlab.errors import TicketlabError
from ticketlab.registry import Registry

LoaderFn = Callable[[Path | None, bool], ImageDataset]


class Resource(NamedTuple):
    """One file to download; archives (``extract=True``) are unpacked into the data root."""

    url: str
    filename: str
    md5: str
    extract: bool


@dataclass(frozen=True)
class DatasetSpec:
    """How to recognise, fetch and parse one dataset in its official distribution format.

    Under every search root, each of ``folder_candidates`` (relative paths) is tried; the
    first holding all ``required_files`` is handed to ``parse``. A required file also counts
    when present with one of ``alt_suffixes`` (MNIST ships gzipped or not). Downloaded
    archives are unpacked into the root (they contain the folder); other downloads go
    straight into ``root / folder_candidates[0]``.
    """

    name: str
    folder_candidates: tuple[str, ...]
    required_files: tuple[str, ...]
    resources: tuple[Resource, ...]
    parse: Callable[[Path], ImageDataset]
    alt_suffixes: tuple[str, ...] = ()

    def missing_files(self, folder: Path) -> list[str]:
        return [
            name
            for name in self.required_files
            if not any((folder / (name + suffix)).is_file() for suffix in ("", *self.alt_suffixes))
        ]

    def find(self, roots: list[Path]) -> Path | None:
        for root in roots:
            # a root may also be the dataset's folder itself (--data-dir .../cifar-10-batches-py)
            for candidate in (*self.folder_candidates, ""):
                folder = root / candidate
                if folder.is_dir() and not self.missing_files(folder):
                    return folder
        return None


DATASETS: Registry[DatasetSpec | LoaderFn] = Registry("dataset")


def register_dataset(name: str) -> Callable:
    """Register a :class:`DatasetSpec` or a loader ``fn(data_dir: Path | None, download: bool) -> ImageDataset``.

    Used as a decorator on a function, or called on a spec: ``register_dataset(spec.name)(spec)``.
    """
    return DATASETS.register(name)


def name_fixes_content(name: str) -> bool:
    """Whether a registered dataset's name fixes what it holds: ticketlab's own (official files, checked, and
    the bundled subset) do; a user's loader may serve other data tomorrow, so its runs are identified by the
    content it returns."""
    entry = DATASETS.get(name)
    return isinstance(entry, DatasetSpec) or getattr(entry, "__module__", "").startswith("ticketlab.")


def list_datasets() -> list[str]:
    return DATASETS.names()


def load_dataset(name: str | os.PathLike, data_dir: str | Path | None = None, download: bool = True,
                 progress: bool = True) -> ImageDataset:
    """Load a registered dataset by name, or a user's ``.npz`` file by path.

    Folders are searched in the order of :func:`search_roots`. A missing dataset is
    downloaded into the first of them when ``download`` is true; otherwise, or when the
    network is unavailable, the TicketlabError says which files were expected, where they
    were looked for, where to get them and how to point ticketlab at them. `progress` shows a download's bar.
    """
    text = os.fspath(name)
    if text.lower().endswith(".npz"):
        return load_npz(_find_npz(text, data_dir))
    entry = DATASETS.get(text)
    if isinstance(entry, DatasetSpec):
        return load_spec(entry, data_dir, download, progress)
    dataset = entry(None if data_dir is None else Path(data_dir).expanduser(), download)
    if not isinstance(dataset, ImageDataset):
        raise TicketlabError(
            f"the loader registered as dataset {text!r} returned {type(dataset).__name__}; "
            "it must return an ImageDataset (build one with ImageDataset.create)"
        )
    dataset.validate()
    return dataset


def load_spec(spec: DatasetSpec, data_dir: str | Path | None, download: bool, progress: bool = True) -> ImageDataset:
    """Find ``spec``'s folder under the search roots, downloading it into the first root if allowed."""
    roots = search_roots(data_dir)
    folder = spec.find(roots)
    if folder is not None:
        return spec.parse(folder)
    if not download:
        raise TicketlabError(_not_found(spec, roots, "downloading was not allowed"))
    if not spec.resources:
        raise TicketlabError(_not_found(spec, roots, "ticketlab cannot download it"))
    try:
        _fetch(spec, roots[0], progress)
    except DownloadUnavailable as exc:
        raise TicketlabError(_not_found(spec, roots, f"downloading failed ({exc})")) from exc
    except OSError as exc:
        raise TicketlabError(
            f"could not save dataset {spec.name!r} under {roots[0]}: {exc}; "
            "free some space or pass --data-dir DIR (or set TICKETLAB_DATA) to a writable folder"
        ) from exc
    folder = spec.find(roots[:1])
    if folder is None:
        raise TicketlabError(
            f"downloaded dataset {spec.name!r} into {roots[0]} but {_files(spec)} are still not in one of "
            f"{_folders(spec, roots[:1])}; delete what was downloaded there and try again"
        )
    return spec.parse(folder)


def _fetch(spec: DatasetSpec, root: Path, progress: bool) -> None:
    """Download (and unpack) every resource into ``root``; on failure, remove folders made here."""
    created: list[Path] = []
    try:
        for resource in spec.resources:
            folder = root if resource.extract else root / spec.folder_candidates[0]
            created.extend(_make_dirs(folder))
            dest = folder / resource.filename
            if not (dest.is_file() and md5_of(dest) == resource.md5):
                download_file(resource.url, dest, resource.md5, progress)
            if resource.extract:
                extract_tar(dest, root)
                dest.unlink()
    except BaseException:
        for folder in reversed(created):
            try:
                folder.rmdir()  # only succeeds on an empty folder, so nothing good is lost
            except OSError:
                pass
        raise


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p that reports the folders it created, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir()
    return list(reversed(missing))


def _files(spec: DatasetSpec) -> str:
    suffix = "".join(f"[{s}]" for s in spec.alt_suffixes)
    return ", ".join(name + suffix for name in spec.required_files)


def _folders(spec: DatasetSpec, roots: list[Path]) -> str:
    return ", ".join(str(root / candidate) for root in roots for candidate in spec.folder_candidates)


def _not_found(spec: DatasetSpec, roots: list[Path], why: str) -> str:
    partial = [
        f"{root / candidate} lacks {', '.join(spec.missing_files(root / candidate))}"
        for root in roots
        for candidate in spec.folder_candidates
        if (root / candidate).is_dir()
    ]
    found = f" ({'; '.join(partial)})" if partial else ""
    if spec.resources:
        extracted = any(r.extract for r in spec.resources)
        where = roots[0] if extracted else roots[0] / spec.folder_candidates[0]
        get = (
            f"download {' '.join(r.url for r in spec.resources)} into {where}"
            + (" and unpack it there" if extracted else "")
            + ", or "
        )
    else:
        get = ""
    return (
        f"dataset {spec.name!r} not found: expected {_files(spec)} in one of {_folders(spec, roots)}{found}; "
        f"{why}. To fix: {get}pass --data-dir DIR or set TICKETLAB_DATA=DIR where DIR holds "
        f"{spec.folder_candidates[0]}/"
    )


def _find_npz(text: str, data_dir: str | Path | None) -> Path:
    path = Path(text).expanduser()
    tried = [path]
    if not path.is_absolute():
        tried += [root / path for root in search_roots(data_dir)]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    raise TicketlabError(
        f"no such file {text!r}: looked at {', '.join(map(str, tried))}; give the path of an existing .npz file"
    )
