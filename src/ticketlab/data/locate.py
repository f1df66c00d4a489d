"""Where datasets live on disk, and how they get there safely.

Downloads and extractions go to a temporary name in the destination folder and are
renamed into place only when complete and verified, so an interrupted run never
leaves a file that a later run would mistake for good data.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from ticketlab.errors import TicketlabError

ENV_VAR = "TICKETLAB_DATA"
_TIMEOUT_S = 30
_CHUNK = 1 << 20
# how a damaged file is replaced, said the same way whether or not this load may download
REFETCH = "then load the dataset with downloads on (without --no-download) to fetch a fresh copy"


class DownloadUnavailable(Exception):
    """The network could not deliver a file; the caller turns this into advice for the user."""


def user_cache_dir() -> Path:
    """The per-user data cache: ``$XDG_CACHE_HOME/ticketlab/data`` or ``~/.cache/ticketlab/data``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "ticketlab" / "data"


def search_roots(data_dir: str | Path | None = None) -> list[Path]:
    """Folders searched for datasets, in order: ``data_dir``, ``$TICKETLAB_DATA``, the user cache.

    The first one is also where a missing dataset is downloaded to. Duplicates are dropped.
    """
    candidates = []
    if data_dir is not None and str(data_dir) != "":
        candidates.append(Path(data_dir).expanduser())
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]).expanduser())
    for path, given in zip(candidates, ("--data-dir", ENV_VAR) if data_dir else (ENV_VAR,)):
        if path.exists() and not path.is_dir():
            raise TicketlabError(f"{given} {path} is a file, not a folder; give the folder that holds the datasets "
                                 "(a .npz dataset file goes to --dataset)")
    candidates.append(user_cache_dir())
    roots: list[Path] = []
    for path in candidates:
        if all(path.resolve() != seen.resolve() for seen in roots):
            roots.append(path)
    return roots


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, md5: str, progress: bool = True) -> None:
    """Fetch ``url`` to ``dest``, verifying its MD5; ``dest`` appears only when verified.

    Raises DownloadUnavailable when the network fails and TicketlabError on a checksum
    mismatch; in both cases nothing is left in ``dest``'s folder.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, _open_url(url) as response:
            total = getattr(response, "length", None)
            bar = tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                file=sys.stderr,
                disable=None if progress else True,
            )
            with bar:
                for block in _blocks(response, url):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        actual = digest.hexdigest()
        if actual != md5:
            raise TicketlabError(
                f"the file downloaded from {url} has MD5 {actual}, expected {md5}, so it was discarded; "
                "try again, and if it keeps failing download it by hand and check it"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _open_url(url: str):
    try:
        return urllib.request.urlopen(url, timeout=_TIMEOUT_S)
    except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
        raise DownloadUnavailable(_reason(url, exc)) from exc


def _blocks(response, url: str) -> Iterator[bytes]:
    """The response body in chunks; only reading is guarded, so a full disk is not called a network error."""
    while True:
        try:
            block = response.read(_CHUNK)
        except (OSError, http.client.HTTPException) as exc:
            raise DownloadUnavailable(_reason(url, exc)) from exc
        if not block:
            return
        yield block


def _reason(url: str, exc: Exception) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        return f"{url}: {exc.reason}"
    return f"{url}: {exc}"


def extract_tar(archive: Path, into: Path) -> list[Path]:
    """Unpack ``archive`` into ``into``; returns the top-level entries it created.

    Extraction happens in a temporary sibling folder whose entries are then renamed into
    place, so a half-extracted dataset is never visible. Members that would land outside
    the folder, links and device files are refused.
    """
    into.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=into, prefix=f".{archive.name}.", suffix=".extract"))
    try:
        try:
            with tarfile.open(archive) as tar:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(staging, filter="data")
                else:  # Python releases before the extraction filters (3.10.11, 3.11.3 and older).
                    tar.extractall(staging, members=_checked_members(tar, archive))
        except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
            raise TicketlabError(
                f"could not unpack {archive}: {exc}; delete it, {REFETCH}"
            ) from exc
        entries = sorted(staging.iterdir())
        for entry in entries:
            if (into / entry.name).exists():
                raise TicketlabError(
                    f"cannot unpack {archive}: {into / entry.name} already exists but is incomplete; "
                    "delete it (or move it away) and try again"
                )
        created = []
        for entry in entries:
            os.replace(entry, into / entry.name)
            created.append(into / entry.name)
        return created
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _checked_members(tar: tarfile.TarFile, archive: Path) -> list[tarfile.TarInfo]:
    members = tar.getmembers()
    for member in members:
        parts = Path(member.name).parts
        if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
            raise TicketlabError(f"refusing to unpack {archive}: unsafe member {member.name!r}")
    return members
