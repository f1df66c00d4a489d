"""The run store: an SQLite index of runs plus one artifact folder per run.

The index answers "which runs exist and how did they end" quickly (`ticketlab runs list`); the
folder holds what a run produced: config.json, metrics.json, checkpoint state and weight
snapshots as safetensors. Every file write is atomic (see files.py); the index uses WAL so a
reader never blocks a training process that is recording progress.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # Windows: runs are not locked against a second process there
    fcntl = None  # type: ignore[assignment]

from ticketlab.config import RunConfig, to_dict
from ticketlab.errors import TicketlabError
from ticketlab.store.files import write_json

DEFAULT_STORE = "ticketlab-runs"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id  TEXT PRIMARY KEY,
    kind    TEXT NOT NULL,
    status  TEXT NOT NULL,          -- incomplete (training or interrupted: see `training`) | finished
    created REAL NOT NULL,
    updated REAL NOT NULL,
    config  TEXT NOT NULL,          -- the full configuration, JSON
    summary TEXT                    -- headline metrics once finished, JSON
)
"""


@dataclass(frozen=True)
class RunRecord:
    run_id: str
    kind: str
    status: str
    created: float
    updated: float
    config: dict[str, Any]
    summary: dict[str, Any] | None
    folder: Path

    @property
    def finished(self) -> bool:
        return self.status == "finished"


def resolve_store_root(root: str | Path | None = None) -> Path:
    """--store DIR, then env TICKETLAB_STORE, then ./ticketlab-runs."""
    return Path(root or os.environ.get("TICKETLAB_STORE") or DEFAULT_STORE)


class RunStore:
    def __init__(self, root: str | Path | None = None, *, create: bool = True) -> None:
        """The folder is made when the first run begins, so a command that stops at a user error
        leaves no empty store behind; `create=False` opens an existing store only, so a read-only
        command given a mistyped --store fails at once."""
        self.root = resolve_store_root(root)
        self._db = self.root / "index.sqlite"
        if self._db.is_file():
            self._open()  # an unreadable index is named before any work
        elif not create:
            raise TicketlabError(
                f"no run store at {self.root}; pass the --store DIR (or $TICKETLAB_STORE) your runs were trained with"
            )

    def _open(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TicketlabError(
                f"cannot create the run store at {self.root}: {e.strerror}; pass a writable --store DIR"
            ) from None
        try:
            with sqlite3.connect(self._db, timeout=30) as con:
                con.execute("PRAGMA journal_mode=WAL")
                con.execute(_SCHEMA)
        except sqlite3.DatabaseError as e:
            raise TicketlabError(
                f"the run index {self._db} is unreadable ({e}); move it away to start a fresh store"
            ) from None
        try:
            (self.root / "runs").mkdir(exist_ok=True)  # after the index opened: a bad index leaves nothing new
        except OSError as e:  # a file named runs, a read-only store
            raise TicketlabError(f"cannot use {self.root / 'runs'} as the store's run folder ({e.strerror}); "
                                 "move that file away, or pass another --store DIR") from None

    def _connect(self) -> sqlite3.Connection:
        if not self._db.is_file():  # the first write of a new store, or a store removed since
            self._open()
        return sqlite3.connect(self._db, timeout=30)

    def _rows(self, query: str, args: tuple = ()) -> list[tuple]:
        """A read, which leaves a store not yet made unmade: it holds no runs."""
        if not self._db.is_file():
            return []
        with self._connect() as con:
            return con.execute(query, args).fetchall()

    def folder(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def _record(self, row: tuple, damaged_ok: bool = False) -> RunRecord:
        """`damaged_ok`: an entry whose JSON is unreadable (an index edited by hand) comes back with status
        "damaged" and no settings, so that `runs list` shows it and `runs rm` removes it."""
        run_id, kind, status, created, updated, config, summary = row
        try:
            config, summary = json.loads(config), json.loads(summary) if summary else None
        except (json.JSONDecodeError, TypeError):
            if not damaged_ok:
                raise TicketlabError(f"the index entry of run {run_id} in {self._db} is unreadable; discard the run "
                                     f"with `ticketlab runs rm {run_id}` and train it again") from None
            status, config, summary = "damaged", {}, None
        return RunRecord(run_id, kind, status, created, updated, config, summary, self.folder(run_id))

    def get(self, run_id: str) -> RunRecord | None:
        rows = self._rows("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        return self._record(rows[0]) if rows else None

    def list(self, kind: str | None = None) -> list[RunRecord]:
        query, args = "SELECT * FROM runs", ()
        if kind:
            query, args = query + " WHERE kind = ?", (kind,)
        return [self._record(r, damaged_ok=True) for r in self._rows(query + " ORDER BY updated", args)]

    def resolve(self, prefix: str, damaged_ok: bool = False) -> RunRecord:
        """A run by id or unique id prefix, as users type them (`damaged_ok`: see `_record`)."""
        rows = self._rows(  # a plain prefix: LIKE would read _ and % as wildcards
            "SELECT * FROM runs WHERE substr(run_id, 1, ?) = ? ORDER BY run_id", (len(prefix), prefix))
        if not rows:
            raise TicketlabError(f"no run {prefix!r} in {self.root}; `ticketlab runs list` shows the runs")
        if len(rows) > 1:
            ids = ", ".join(r[0] for r in rows[:5])
            raise TicketlabError(f"run prefix {prefix!r} is ambiguous ({ids}, ...); type more of the id")
        return self._record(rows[0], damaged_ok)

    def begin(self, config: RunConfig) -> RunRecord:
        """The run for this configuration: existing (finished or resumable) or newly created."""
        existing = self.get(config.run_id)
        if existing is not None:
            return existing
        if not self._db.is_file():  # a new store is made by its first run
            self._open()
        folder = self.folder(config.run_id)
        full = to_dict(config)
        write_json(folder / "config.json", full)
        now = time.time()
        with self._connect() as con:
            con.execute(
                "INSERT OR IGNORE INTO runs VALUES (?, ?, 'incomplete', ?, ?, ?, NULL)",
                (config.run_id, config.kind, now, now, json.dumps(full, sort_keys=True)),
            )
        return self.get(config.run_id)  # type: ignore[return-value]

    @contextmanager
    def claim(self, config: RunConfig) -> Iterator[RunRecord]:
        """`begin`, holding an unfinished run for this process alone until the block ends.

        Two commands sharing a store (parallel sweeps share their dense run) then train each run
        once: the second waits for the first and finds the run finished, or gone if it failed.
        The lock is the operating system's, so a killed process frees it. Its file is deleted by
        its holder, still holding it; a waiter that then gets the deleted file's lock tries again.
        """
        record = self.begin(config)
        if record.finished or fcntl is None:
            yield record
            return
        lock = self._lock(config.run_id)
        lock.parent.mkdir(exist_ok=True)
        told = False
        while True:
            handle = open(lock, "a")
            if not _try_lock(handle):
                if not told:
                    print(f"run {config.run_id} is being trained by another process on {self.root}; "
                          f"waiting for it to finish", file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(handle, fcntl.LOCK_EX)
            if _still_at(handle, lock):
                break
            handle.close()  # its holder deleted this file: the lock now lives in a new one
        try:
            yield self.begin(config)  # read again: the other process may have finished or removed it
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()

    def training(self, run_id: str) -> bool:
        """Whether a process holds the run now: an unfinished run is training, else interrupted."""
        lock = self._lock(run_id)
        if fcntl is None or not lock.exists():
            return False
        with open(lock, "rb") as handle:
            if not _try_lock(handle):
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    def _lock(self, run_id: str) -> Path:
        return self.root / "locks" / run_id  # outside the run's folder, which `remove` deletes

    def finish(self, run_id: str, summary: dict[str, Any]) -> RunRecord:
        write_json(self.folder(run_id) / "summary.json", summary)
        with self._connect() as con:
            con.execute(
                "UPDATE runs SET status = 'finished', updated = ?, summary = ? WHERE run_id = ?",
                (time.time(), json.dumps(summary, sort_keys=True), run_id),
            )
        return self.get(run_id)  # type: ignore[return-value]

    def remove(self, run_id: str) -> None:
        """Forget a run: index row first, so a crash in between leaves only an unlisted folder."""
        with self._connect() as con:
            con.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))
        shutil.rmtree(self.folder(run_id), ignore_errors=True)


def _still_at(handle: Any, path: Path) -> bool:
    """Whether the open, locked `handle` is still the file at `path` (not deleted or replaced)."""
    try:
        here, there = os.fstat(handle.fileno()), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _try_lock(handle: Any) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
