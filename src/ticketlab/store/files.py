"""Atomic writes and tensor-tree serialisation.

Everything the store writes goes to a temporary sibling first and is moved into place with
`os.replace`, so a crash never leaves a half-written file. Tensors go to safetensors and the
rest of a state (numbers, strings, nesting) to JSON: nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ticketlab.errors import TicketlabError

_TENSOR = "__tensor__"
_UMASK = os.umask(0)
os.umask(_UMASK)


class CorruptFileError(TicketlabError):
    """A stored file that cannot be read back (truncated, overwritten, deleted).

    Separate from other user errors because training must not discard the run on it: the user
    decides, with the fix the message names.
    """


class UnwritableFileError(TicketlabError):
    """A file that cannot be written (a full disk, no permission): like a corrupt file, it must not
    make training discard the run, which resumes once the user has fixed the cause."""


def unreadable(path: Path, error: Exception) -> CorruptFileError:
    """The error for `path`, with the fix: discard the stored run the file belongs to (found by
    walking up to a `runs/<id>` folder of a store), or replace a file of the user's own."""
    path = Path(path)
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
    fix = "replace it with a file ticketlab wrote"
    for folder in path.parents:
        root = folder.parent.parent
        if folder.parent.name == "runs" and (root / "index.sqlite").is_file():
            fix = f"discard its run with `ticketlab runs rm {folder.name} --store {root}` and train it again"
            break
    return CorruptFileError(f"cannot read {path} ({reason}); {fix}")


def writable(path: str | Path, suffix: str, option: str) -> Path:
    """`path`, checked before any work is done for it: an output a user named with `option`."""
    path = Path(path)
    if path.suffix != suffix:
        raise TicketlabError(f"{option} {path} should be a {suffix} file; name it {path.stem}{suffix}")
    if path.is_dir():
        raise TicketlabError(f"{option} {path} is a folder; give the path of a file to write (a new name inside it)")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        why = "a file, not a folder" if not folder.is_dir() else "a folder you cannot write to"
        raise TicketlabError(f"cannot write {option} {path}: {folder} is {why}; choose another path")
    return path


def atomic_write(path: Path, write) -> None:
    """Run `write(tmp_path)` on a temporary sibling, then move it into place in one step."""
    if path.is_dir():
        raise TicketlabError(f"{path} is a folder; give the path of a file to write (a new name inside it, say)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        why = e.strerror or e
        raise UnwritableFileError(f"cannot write {path} ({why}); choose a path in a writable folder") from None
    os.close(fd)
    try:
        write(tmp)
        # mkstemp makes 0600 files, and writers that replace the file (safetensors) make their own: results are
        # meant to be shared like any other file, so the mode is set on what was written
        os.chmod(tmp, 0o666 & ~_UMASK)
        _sync(tmp)  # on disk before it takes the name: after a power cut a run's file is whole or absent
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota
        Path(tmp).unlink(missing_ok=True)
        why = e.strerror or e
        raise UnwritableFileError(f"cannot write {path} ({why}); free some space or choose another path") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _sync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(Path(path), write)


def read_json(path: Path) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:  # ValueError: bad JSON or bad UTF-8
        raise unreadable(path, e) from None


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    # safetensors refuses non-contiguous tensors and tensors sharing storage (tied weights): those get copies
    clean, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().contiguous().cpu()
        if v.untyped_storage().data_ptr() in seen:
            v = v.clone()
        seen.add(v.untyped_storage().data_ptr())
        clean[k] = v
    atomic_write(Path(path), lambda tmp: save_file(clean, tmp, metadata=metadata))


def read_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError) as e:
        raise unreadable(path, e) from None


def split_tensors(tree: Any, prefix: str = "") -> tuple[Any, dict[str, torch.Tensor]]:
    """Replace every tensor in a nested dict/list by a reference; return (skeleton, tensors)."""
    tensors: dict[str, torch.Tensor] = {}

    def walk(node: Any, key: str) -> Any:
        if isinstance(node, torch.Tensor):
            # numbered: paths alone collide ({"a.b": x} and {"a": {"b": y}}, keys 1 and "1" in a hook's state)
            key = f"{len(tensors)}:{key}"
            tensors[key] = node
            return {_TENSOR: key}
        if isinstance(node, dict):
            # JSON keys are strings; remember int keys (optimizer state is keyed by param index)
            return {"__dict__": [[k, walk(v, f"{key}.{k}")] for k, v in node.items()]}
        if isinstance(node, (list, tuple)):
            return [walk(v, f"{key}.{i}") for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot serialise {type(node).__name__} at {key!r}")

    return walk(tree, prefix), tensors


def join_tensors(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(skeleton, dict):
        if _TENSOR in skeleton:
            return tensors[skeleton[_TENSOR]]
        return {k: join_tensors(v, tensors) for k, v in skeleton["__dict__"]}
    if isinstance(skeleton, list):
        return [join_tensors(v, tensors) for v in skeleton]
    return skeleton


def save_state(path: Path, state: dict[str, Any]) -> None:
    """A nested training state in ONE safetensors file, its JSON skeleton in the metadata.

    One file means one atomic replace: a reader never pairs new tensors with an old step count.
    """
    skeleton, tensors = split_tensors(state)
    write_tensors(Path(path), tensors, metadata={"skeleton": json.dumps(skeleton)})


def load_state(path: Path, device: str | torch.device = "cpu") -> dict[str, Any] | None:
    path = Path(path)
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            skeleton = json.loads(f.metadata()["skeleton"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return join_tensors(skeleton, tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:  # Key/TypeError: a bad skeleton
        raise unreadable(path, e) from None
