"""
The batch journal: a SQLite file that makes a batch survive ``kill -9`` without paying twice.

Each input's row is written *before* its createTask is sent (index, request fingerprint,
callback token), updated with the task id once accepted, then with the final outcome. Every
write is its own committed transaction (WAL), so a killed process leaves a journal that says
exactly how far each input got.
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import attrs

from ._errors import JournalMismatch
from ._models import EditRequest, EditResult, TaskRecord
from ._wire import parse_record, record_to_wire

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    idx INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    token TEXT,
    state TEXT NOT NULL,
    task_id TEXT,
    record TEXT,
    error TEXT,
    files TEXT,
    updated REAL NOT NULL
);
"""


class Stage(enum.StrEnum):
    """How far an input got."""

    #: createTask may have been sent; the answer was never journaled.
    SENDING = "sending"
    #: The service accepted it; the task id is known.
    ACCEPTED = "accepted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    #: createTask's outcome could not be learned; never resubmitted.
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        """True when a rerun needs no call to the service for this input."""
        return self in (Stage.SUCCEEDED, Stage.FAILED, Stage.UNKNOWN)


@attrs.frozen(kw_only=True)
class Entry:
    """One journaled input."""

    index: int
    fingerprint: str
    token: str | None
    stage: Stage
    task_id: str | None = None
    record: TaskRecord | None = None
    error: str | None = None
    files: tuple[Path, ...] = ()


class Journal:
    """A batch journal file; use as a context manager or call ``close()``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL + NORMAL survives a killed process (not a power cut) at a fraction of FULL's cost.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._check_version()

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the file; idempotent."""
        self._db.close()

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            raise JournalMismatch(f"{self.path} has journal schema {row[0]}, not {SCHEMA_VERSION}")

    def get(self, index: int, request: EditRequest) -> Entry | None:
        """Return the entry of input ``index``; refuse one journaled for another request."""
        row = self._db.execute(
            "SELECT fingerprint, token, state, task_id, record, error, files"
            " FROM items WHERE idx = ?",
            (index,),
        ).fetchone()
        if row is None:
            return None
        if row[0] != request.fingerprint():
            raise JournalMismatch(
                f"{self.path} belongs to another batch: input {index} differs from the one"
                " journaled; use a new journal file for new inputs"
            )
        record = parse_record(json.loads(row[4])) if row[4] else None
        files = tuple(Path(f) for f in json.loads(row[6])) if row[6] else ()
        return Entry(
            index=index,
            fingerprint=row[0],
            token=row[1],
            stage=Stage(row[2]),
            task_id=row[3],
            record=record,
            error=row[5],
            files=files,
        )

    def sending(self, index: int, request: EditRequest, token: str | None) -> None:
        """Journal an input before its createTask is sent."""
        self._db.execute(
            "INSERT INTO items (idx, fingerprint, token, state, updated) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (idx) DO NOTHING",  # a retry after a connection that never opened
            (index, request.fingerprint(), token, Stage.SENDING.value, time.time()),
        )

    def accepted(self, index: int, task_id: str) -> None:
        """Journal the task id the service gave an input."""
        self._update(index, state=Stage.ACCEPTED.value, task_id=task_id)

    def succeeded(self, index: int, result: EditResult) -> None:
        """Journal a successful task's final record."""
        self._update(
            index,
            state=Stage.SUCCEEDED.value,
            task_id=result.task_id,
            record=json.dumps(record_to_wire(result.record)),
        )

    def ended(self, index: int, stage: Stage, error: BaseException) -> None:
        """Journal an input that ended without a result (failed, or unknown)."""
        self._update(index, state=stage.value, error=f"{type(error).__name__}: {error}")

    def downloaded(self, index: int, files: list[Path]) -> None:
        """Journal where an input's images were saved."""
        self._update(index, files=json.dumps([str(f) for f in files]))

    def forget(self, index: int) -> None:
        """Drop an input the service refused before making a task: a rerun may send it."""
        self._db.execute("DELETE FROM items WHERE idx = ?", (index,))

    def counts(self) -> dict[Stage, int]:
        """Return how many inputs are at each stage."""
        rows = self._db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall()
        return {Stage(state): n for state, n in rows}

    def _update(self, index: int, **columns: Any) -> None:
        names = ", ".join(f"{name} = ?" for name in columns)
        self._db.execute(
            f"UPDATE items SET {names}, updated = ? WHERE idx = ?",  # noqa: S608 (names are ours)
            (*columns.values(), time.time(), index),
        )
