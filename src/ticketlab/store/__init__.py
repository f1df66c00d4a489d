"""Where runs live: an SQLite index plus safetensors/JSON artifacts, all writes atomic."""

from ticketlab.store.files import (
    CorruptFileError,
    UnwritableFileError,
    load_state,
    read_json,
    read_tensors,
    save_state,
    unreadable,
    writable,
    write_json,
    write_tensors,
)
from ticketlab.store.store import RunRecord, RunStore, resolve_store_root

__all__ = [
    "CorruptFileError", "RunRecord", "RunStore", "resolve_store_root", "load_state", "save_state",
    "read_json", "write_json", "read_tensors", "write_tensors", "UnwritableFileError", "unreadable", "writable",
]
