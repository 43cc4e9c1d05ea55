"""
The batch journal: a SQLite file that makes a batch survive ``kill -9`` without paying twice.

Each input's row is written *before* its createTask is sent (index, request fingerprint,
callback token), updated with the task id once accepted, then with the final outcome. Writes
are grouped: everything written within a few milliseconds (``COMMIT_GAP``) is committed (WAL,
fsynced) in one transaction, so a killed process leaves a journal that says how far each
input got, and a batch of thousands pays one commit per gap instead of one per write or per
loop turn. A createTask waits for the commit of its ``sending`` row.

What survives what:

- ``kill -9`` or a crash of the process: everything committed. Writes still queued (those
  of the last ``COMMIT_GAP``, 5 ms) are lost: an input whose task id was lost reads
  ``sending`` and is reconciled by its callback token, or reported ``unknown``; one whose
  outcome was lost reads ``accepted`` and is re-attached by its task id. Never sent twice,
  since no createTask leaves before its row is committed. ``sending`` means possibly on
  the wire, nothing more: a createTask answered 429 (or whose connection never opened)
  made no task, and its row goes back to never sent while it waits, so a kill in a storm
  of 429s strands nothing, and a rerun finds ``sending`` only what was truly on the wire.
- A power cut or OS crash: the same. Every commit is fsynced (``synchronous=FULL``, at
  most one every few milliseconds, each covering everything queued), and a createTask
  leaves only once the commit of its ``sending`` row is, so a rerun never resubmits a sent
  input. (Fsyncing only the commits with ``sending`` rows meant switching ``synchronous``
  twice per commit, which cost more than the fsyncs of the update-only commits it saved.)

A journal belongs to one run at a time: ``NAME.lock`` beside it is locked (``flock``) while a
run holds it. The OS drops the lock when its process dies, so there is never a stale lock to
delete; a second run is refused with ``JournalBusy`` naming the holder. The journal holds
callback tokens, so it is created readable by its owner only (0600).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import json
import math
import operator
import os
import socket
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import attrs

from ._errors import JournalBusy, JournalError, JournalMismatch
from ._models import EditResult, TaskRecord, TaskRequest
from ._wire import MalformedPayload, dump_json, load_json, parse_record, record_to_wire


def _try_lock(fd: int) -> bool:
    """Take an exclusive, non-blocking lock on ``fd``; the OS drops it with the process."""
    if sys.platform == "win32":  # pragma: no cover (CI runs on Linux)
        import msvcrt  # noqa: PLC0415

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl  # noqa: PLC0415

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


SCHEMA_VERSION = "1"
#: Least seconds between two (fsynced) commits: a createTask waits at most this long for its
#: ``sending`` row, and a busy batch, which writes on nearly every loop turn, pays one commit
#: (WAL writes and a fsync) per gap for a whole group instead of one per turn.
COMMIT_GAP = 0.005
#: Rows ``get`` reads in one query when a batch resumes.
READ_AHEAD = 2048

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
CREATE TABLE IF NOT EXISTS uploads (sha256 TEXT PRIMARY KEY, url TEXT NOT NULL, at REAL NOT NULL);
"""


class Stage(enum.StrEnum):
    """How far an input got."""

    #: createTask may be on the wire (a 429 puts the row back); its answer was not journaled.
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


# Each write's statement, made once (a batch writes three rows per input).
_SENDING, _ACCEPTED, _SUCCEEDED = Stage.SENDING.value, Stage.ACCEPTED.value, Stage.SUCCEEDED.value
_INSERT_SENDING = (
    "INSERT INTO items (idx, fingerprint, token, state, updated) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (idx) DO NOTHING"  # a retry after a connection that never opened
)
_SET_ACCEPTED = "UPDATE items SET state = ?, task_id = ?, updated = ? WHERE idx = ?"
_SET_SUCCEEDED = "UPDATE items SET state = ?, task_id = ?, record = ?, updated = ? WHERE idx = ?"
_SET_ENDED = "UPDATE items SET state = ?, error = ?, updated = ? WHERE idx = ?"
_SET_FILES = "UPDATE items SET files = ?, updated = ? WHERE idx = ?"


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


class _Lock:
    """An exclusive ``flock`` on ``NAME.lock``, released by ``close`` or by the process dying."""

    def __init__(self, journal: Path) -> None:
        self.path = journal.with_name(journal.name + ".lock")
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise JournalError(f"cannot open {self.path}: {e.strerror or e}", path=journal) from e
        if not _try_lock(self._fd):
            os.lseek(self._fd, 0, os.SEEK_SET)
            holder = os.read(self._fd, 200).decode("utf-8", "replace").strip() or None
            self.close()
            raise JournalBusy(
                f"journal {journal} is in use by another run"
                + (f" ({holder})" if holder else "")
                + "; wait for it to finish, or use another journal",
                path=journal,
                holder=holder,
            ) from None
        me = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}"
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        os.write(self._fd, me.encode())

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops the flock


class Journal:
    """A batch journal file, held by this run until ``close()`` (or a context manager)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = _Lock(self.path)
        self._closed = False
        #: Writes of this loop turn, committed together by ``flush`` (scheduled once).
        self._queued: list[tuple[str, tuple[Any, ...]]] = []
        #: createTasks waiting for their ``sending`` rows to be durable.
        self._durable: list[asyncio.Future[None]] = []
        #: The scheduled commit of the queued writes, if any.
        self._flush: asyncio.Handle | None = None
        #: A failed background commit, raised by the next call (the batch stops on it).
        self._failure: JournalError | None = None
        #: Rows read ahead by ``get`` (None: read, absent from the journal).
        self._ahead: dict[int, tuple[Any, ...] | None] = {}
        #: Loop time of the last commit.
        self._last_commit = -math.inf
        try:
            # Created by us, it is ours alone: it holds callback tokens.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            self._lock.close()
            raise JournalError(f"cannot open journal {self.path}: {e}", path=self.path) from e
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._check_version()
        except sqlite3.DatabaseError as e:
            self.close()
            raise JournalError(
                f"{self.path} is not a batch journal, or is damaged ({e}); move it away or"
                " use another file",
                path=self.path,
            ) from e

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Commit what is queued, close the file and let other runs have it; idempotent."""
        if self._closed:
            return
        with contextlib.suppress(JournalError):
            self.flush()
        self._closed = True
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._lock.close()

    def _check_version(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is None:
            self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
        elif row[0] != SCHEMA_VERSION:
            self.close()
            raise JournalMismatch(
                f"{self.path} has journal schema {row[0]}, not {SCHEMA_VERSION}", path=self.path
            )

    # --- grouped writes -------------------------------------------------------------------

    def _write(self, sql: str, args: tuple[Any, ...]) -> None:
        """Queue a write for the next commit (at once, outside an event loop). Commits come
        at most every ``COMMIT_GAP`` seconds: at high throughput each covers many rows, and
        at low throughput none waits."""
        if self._failure is not None:
            raise self._failure
        self._queued.append((sql, args))
        if self._flush is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush = loop.call_at(self._last_commit + COMMIT_GAP, self._flush_in_loop)

    def _flush_in_loop(self) -> None:
        try:
            self.flush()
        except JournalError as e:
            self._failure = e  # raised by the batch's next journal call

    def flush(self) -> None:
        """Commit every queued write in one (fsynced) transaction, then let the createTasks
        waiting for it go."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        queued, self._queued = self._queued, []
        durable, self._durable = self._durable, []
        if not queued:
            return
        try:
            self._commit(queued)
        except JournalError as e:
            for waiter in durable:
                if not waiter.done():
                    waiter.set_exception(e)
            raise
        with contextlib.suppress(RuntimeError):
            self._last_commit = asyncio.get_running_loop().time()
        for waiter in durable:
            if not waiter.done():
                waiter.set_result(None)

    def _commit(self, queued: list[tuple[str, tuple[Any, ...]]]) -> None:
        try:
            self._query("BEGIN", ())
            # Runs of the same statement go to sqlite as one executemany, in order.
            for sql, runs in itertools.groupby(queued, key=operator.itemgetter(0)):
                self._query_many(sql, [args for _, args in runs])
            self._query("COMMIT", ())
        except JournalError:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            raise

    def last_index(self) -> int | None:
        """The highest input index journaled, if any."""
        self.flush()
        row = self._query("SELECT MAX(idx) FROM items", ()).fetchone()
        return None if row is None or row[0] is None else int(row[0])

    def get(self, index: int, request: TaskRequest) -> Entry | None:
        """Return the entry of input ``index``; refuse one journaled for another request.

        Rows are read ahead ``READ_AHEAD`` at a time (a resumed batch asks in index order),
        each read once: ask for an input's entry before this run writes to it."""
        if index not in self._ahead:
            if self._queued:
                self.flush()
            ahead: dict[int, tuple[Any, ...] | None] = dict.fromkeys(
                range(index, index + READ_AHEAD)
            )
            for row in self._query(
                "SELECT idx, fingerprint, token, state, task_id, record, error, files"
                " FROM items WHERE idx >= ? AND idx < ?",
                (index, index + READ_AHEAD),
            ):
                ahead[row[0]] = row[1:]
            self._ahead = ahead
        row = self._ahead.pop(index)
        if row is None:
            return None
        if row[0] != request.fingerprint():
            raise JournalMismatch(
                f"{self.path} belongs to another batch: input {index} differs from the one"
                " journaled; use a new journal file for new inputs",
                path=self.path,
            )
        try:
            record = parse_record(load_json(row[4])) if row[4] else None
            files = tuple(Path(f) for f in load_json(row[6])) if row[6] else ()
            stage = Stage(row[2])
        except (MalformedPayload, ValueError, TypeError) as e:
            raise JournalError(
                f"{self.path}: input {index} is damaged ({e})", path=self.path
            ) from e
        return Entry(
            index=index,
            fingerprint=row[0],
            token=row[1],
            stage=stage,
            task_id=row[3],
            record=record,
            error=row[5],
            files=files,
        )

    def sending(
        self, index: int, request: TaskRequest, token: str | None
    ) -> asyncio.Future[None] | None:
        """Journal an input before its createTask is sent; await the future returned (in an
        event loop) before sending: it resolves once the row is durable (fsynced)."""
        self._write(
            _INSERT_SENDING,
            (index, request.fingerprint(), token, _SENDING, time.time()),
        )
        if self._flush is None:  # outside a loop: already committed
            return None
        waiter = asyncio.get_running_loop().create_future()
        self._durable.append(waiter)
        return waiter

    def accepted(self, index: int, task_id: str) -> None:
        """Journal the task id the service gave an input."""
        self._write(_SET_ACCEPTED, (_ACCEPTED, task_id, time.time(), index))

    def succeeded(self, index: int, result: EditResult) -> None:
        """Journal a successful task's final record."""
        record = dump_json(record_to_wire(result.record)).decode()
        self._write(_SET_SUCCEEDED, (_SUCCEEDED, result.task_id, record, time.time(), index))

    def ended(self, index: int, stage: Stage, error: BaseException) -> None:
        """Journal an input that ended without a result (failed, or unknown)."""
        self._write(
            _SET_ENDED, (stage.value, f"{type(error).__name__}: {error}", time.time(), index)
        )

    def downloaded(self, index: int, files: list[Path]) -> None:
        """Journal where an input's images were saved."""
        self._write(_SET_FILES, (json.dumps([str(f) for f in files]), time.time(), index))

    def forget(self, index: int) -> None:
        """Drop an input the service made no task for (refused it, or answered 429 and it
        waits to try again): never sent, as far as a rerun knows, so it may send it."""
        self._write("DELETE FROM items WHERE idx = ?", (index,))

    def uploaded(self, sha256: str, url: object, at: float) -> None:
        """Journal a local image's upload, so a resumed run does not upload it again."""
        self._write(
            "INSERT INTO uploads VALUES (?, ?, ?)"
            " ON CONFLICT (sha256) DO UPDATE SET url = excluded.url, at = excluded.at",
            (sha256, str(url), at),
        )

    def callbacks_went_to(self) -> str | None:
        """Where the last run's callbacks went ("" nowhere: it polled; None: not journaled)."""
        if self._queued:
            self.flush()
        row = self._query("SELECT value FROM meta WHERE key = 'callbacks'", ()).fetchone()
        return None if row is None else str(row[0])

    def callbacks_go_to(self, url: str) -> None:
        """Journal where this run's callbacks go ("" nowhere), before it sends anything: a
        rerun listening elsewhere cannot hear the callbacks of what this run sent."""
        self._write(
            "INSERT INTO meta VALUES ('callbacks', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (url,),
        )

    def uploads(self) -> list[tuple[str, str, float]]:
        """Every journaled upload: content hash, URL, wall-clock time."""
        self.flush()
        rows = self._query("SELECT sha256, url, at FROM uploads", ()).fetchall()
        return [(str(h), str(u), float(t)) for h, u, t in rows]

    def counts(self) -> dict[Stage, int]:
        """Return how many inputs are at each stage."""
        self.flush()
        rows = self._query("SELECT state, COUNT(*) FROM items GROUP BY state", ()).fetchall()
        return {Stage(state): n for state, n in rows}

    def _query_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            self._db.executemany(sql, rows)
        except sqlite3.Error as e:
            raise JournalError(f"journal {self.path}: {e}", path=self.path) from e

    def _query(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        """Run one statement; a database failure (disk full, damage) is a ``JournalError``."""
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as e:
            raise JournalError(f"journal {self.path}: {e}", path=self.path) from e
