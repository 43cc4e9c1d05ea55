"""Issue 9 §2, §4, §9: a journal belongs to one run; a refused run touches nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

from seedream_async import (
    BatchProgress,
    CallbackReceiver,
    EditRequest,
    JournalBusy,
    JournalError,
    JournalMismatch,
    SeedreamClient,
)
from seedream_async._journal import COMMIT_GAP, Journal, Stage
from seedream_async.simulator import Simulator, SimulatorConfig
from tests.conftest import FAST, ClientFactory, request, until
from tests.test_cli import run, small_manifest

PRECIOUS = b"results of an earlier run\n"


def cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "seedream_async.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )


def test_two_runs_on_one_journal_the_second_is_refused_at_once(tmp_path: Path) -> None:
    """An overlapping cron: before, both runs submitted every input (80 paid for 40)."""
    manifest = small_manifest(tmp_path / "m.jsonl", 30)
    journal = tmp_path / "j.sqlite"
    first = cli("batch", str(manifest), "--simulate", "--journal", str(journal), "-q",
                "--out", str(tmp_path / "first.jsonl"))  # fmt: skip
    lock = journal.with_name(journal.name + ".lock")
    deadline = time.monotonic() + 20
    while not (lock.exists() and b"pid" in lock.read_bytes()):
        assert time.monotonic() < deadline, "the first run never took the journal"
        assert first.poll() is None, first.communicate()
        time.sleep(0.02)
    second_out = tmp_path / "second.jsonl"
    second_out.write_bytes(PRECIOUS)
    started = time.monotonic()
    second = cli("batch", str(manifest), "--simulate", "--journal", str(journal), "-q",
                 "--out", str(second_out))  # fmt: skip
    _, err = second.communicate(timeout=30)
    assert second.returncode == 2
    assert time.monotonic() - started < 10  # at once, not after a batch's worth of work
    message = err.decode()
    assert str(journal) in message
    assert f"pid {first.pid}" in message  # names what holds it
    assert "Traceback" not in message
    assert second_out.read_bytes() == PRECIOUS
    first.communicate(timeout=60)
    assert first.returncode == 0


def test_a_killed_run_releases_its_journal(tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from seedream_async._journal import Journal;"
         "j = Journal(sys.argv[1]); print('held', flush=True); time.sleep(60)", str(journal)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert holder.stdout is not None
    assert holder.stdout.readline() == b"held\n"
    with pytest.raises(JournalBusy, match="in use by another run") as busy:
        Journal(journal)
    assert busy.value.holder is not None
    assert f"pid {holder.pid}" in busy.value.holder
    holder.send_signal(signal.SIGKILL)
    holder.communicate()
    Journal(journal).close()  # no stale lock to delete by hand


@pytest.mark.parametrize("why", ["mismatch", "busy", "bad manifest", "missing key", "damaged"])
def test_a_refused_run_exits_2_and_leaves_its_files_alone(
    tmp_path: Path,
    why: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 4)
    journal = tmp_path / "j.sqlite"
    out = tmp_path / "out.jsonl"
    out.write_bytes(PRECIOUS)
    args = ["batch", str(manifest), "--journal", str(journal), "--out", str(out), "-q"]
    held = None
    if why == "mismatch":  # a journal written for other inputs
        other = tmp_path / "other.jsonl"
        other.write_text(
            '{"prompt": "something else", "image_urls": ["https://x.example/a.png"]}\n'
        )
        assert run("batch", str(other), "--simulate", "--journal", str(journal), "-q",
                   "--out", str(tmp_path / "other.out")) == 0  # fmt: skip
    elif why == "busy":
        held = Journal(journal)
    elif why == "bad manifest":
        manifest.write_text(manifest.read_text() + "{not json\n")
    elif why == "missing key":
        monkeypatch.delenv("APIKLEY_API_KEY", raising=False)
    elif why == "damaged":
        journal.write_bytes(b"this is not a database, it is a truncated mess" * 100)
    if why != "missing key":
        args.append("--simulate")
    before = journal.read_bytes() if journal.exists() else None
    try:
        assert run(*args) == 2
    finally:
        if held is not None:
            held.close()
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") >= 1
    assert out.read_bytes() == PRECIOUS
    if before is not None and why != "busy":
        assert journal.read_bytes() == before


async def test_edit_many_refuses_a_journal_another_run_holds(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    sim.config.latency = (0.3, 0.3)
    journal = tmp_path / "j.sqlite"
    client = make_client(callbacks=True)
    first = client.edit_many([request(n) for n in range(10)], journal=journal)
    first_item = asyncio.ensure_future(anext(first))
    await until(lambda: sim.stats.create_requests > 0)
    created = sim.stats.create_requests
    with pytest.raises(JournalBusy):
        async for _ in make_client().edit_many([request(n) for n in range(10)], journal=journal):
            pass
    await first_item
    async for _ in first:
        pass
    assert sim.stats.tasks_created == 10
    assert created <= 10


async def test_a_journal_of_other_inputs_is_refused_before_anything_is_sent(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The journal matches the first inputs but not input 9; input 3 was never journaled (a
    refusal in the earlier run). Before, input 3 was paid for, then the mismatch raised."""
    journal = tmp_path / "j.sqlite"
    earlier = [request(n) for n in range(10)]
    with Journal(journal) as j:
        for n, req in enumerate(earlier):
            if n != 3:
                j.sending(n, req, None)
                j.ended(n, Stage.FAILED, RuntimeError("failed in the earlier run"))
    now = [*earlier[:9], request(99)]
    with pytest.raises(JournalMismatch, match="input 9"):
        async for _ in make_client(max_in_flight=2).edit_many(now, journal=journal):
            pass
    assert sim.stats.create_requests == 0


async def test_a_garbage_journal_is_a_typed_error(
    make_client: ClientFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    journal.write_bytes(b"SQLite format 3\x00" + os.urandom(3000))
    with pytest.raises(JournalError, match="not a batch journal"):
        async for _ in make_client().edit_many([request(0)], journal=journal):
            pass


def test_journal_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    journal = tmp_path / "j.sqlite"
    with Journal(journal) as j:
        j.sending(0, EditRequest(prompt="p", image_urls=["https://a.example/x.png"]), "t" * 24)
    for path in (journal, journal.with_name(journal.name + ".lock")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


async def test_every_create_goes_out_after_its_sending_row_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes are grouped per loop turn, and a createTask still waits for its row: another
    connection, looking at the moment each createTask reaches the service, sees it there,
    even when the disk is slow to commit."""
    journal = tmp_path / "j.sqlite"
    commit = Journal._flush_in_loop

    def slow_disk(self: Journal) -> None:
        asyncio.get_running_loop().call_later(0.02, commit, self)

    monkeypatch.setattr(Journal, "_flush_in_loop", slow_disk)
    seen: list[tuple[int, int]] = []
    creates = 0

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        nonlocal creates
        if request.path.endswith("/createTask"):
            creates += 1
            with contextlib.closing(sqlite3.connect(journal)) as other:
                (rows,) = other.execute("SELECT COUNT(*) FROM items").fetchone()
            seen.append((creates, rows))
        return await handler(request)

    sim = Simulator(SimulatorConfig(latency=(0.0, 0.05)))
    sim.app.middlewares.append(check)
    async with (
        sim,
        SeedreamClient(
            "k", base_url=sim.url, settings=attrs.evolve(FAST, max_in_flight=50)
        ) as client,
    ):
        done = [
            item
            async for item in client.edit_many((request(n) for n in range(200)), journal=journal)
        ]
    assert all(item.ok for item in done)
    assert len(seen) == 200
    assert all(rows >= n for n, rows in seen), [s for s in seen if s[1] < s[0]][:5]
    with Journal(journal) as j:
        assert j.counts() == {Stage.SUCCEEDED: 200}


def test_every_commit_is_fsynced(tmp_path: Path) -> None:
    """Updates too, not only the commits with ``sending`` rows: a task id or an outcome
    committed before a power cut is still there after it."""
    with Journal(tmp_path / "j.sqlite") as j:
        j.sending(0, request(0), "t" * 24)
        j.accepted(0, "task_0")
        (mode,) = j._db.execute("PRAGMA synchronous").fetchone()
    assert mode == 2  # FULL: the write-ahead log is fsynced at every commit


async def test_updates_over_many_loop_turns_share_a_commit(tmp_path: Path) -> None:
    """A busy batch journals an update on nearly every turn of the event loop; committing each
    turn's writes alone cost a WAL write per turn. Updates wait up to ``COMMIT_GAP`` to share
    one, and are then visible to any other reader."""
    journal = tmp_path / "j.sqlite"
    wal = journal.with_name(journal.name + "-wal")
    turns = 200
    with Journal(journal) as j, contextlib.closing(sqlite3.connect(journal)) as other:
        (page,) = other.execute("PRAGMA page_size").fetchone()
        j.sending(0, request(0), "t" * 24)
        j.flush()
        before = wal.stat().st_size
        for turn in range(turns):
            j.accepted(0, f"task_{turn}")
            await asyncio.sleep(0)
        await asyncio.sleep(2 * COMMIT_GAP)
        await asyncio.sleep(0)
        (task_id,) = other.execute("SELECT task_id FROM items WHERE idx = 0").fetchone()
        # Every commit appends at least one page (a frame) to the write-ahead log.
        commits_at_most = (wal.stat().st_size - before) // (page + 24)
    assert task_id == f"task_{turns - 1}"  # the last update, committed without a flush call
    assert 1 <= commits_at_most < turns // 4, commits_at_most


def journal_states(journal: Path) -> dict[int, str]:
    """The journal's rows as another process sees them, while a run holds it."""
    with contextlib.closing(sqlite3.connect(journal)) as other:
        return dict(other.execute("SELECT idx, state FROM items").fetchall())


async def test_a_429_puts_its_row_back_to_never_sent(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Issue 32 §1: a createTask answered 429 made no task, yet its row said ``sending``
    (possibly made: a rerun never sends it) for as long as it waited out the 429s; a kill
    then stranded it. Now the row goes back to never sent before it waits."""
    sim.config.create_limit = (1, 60.0)  # one of the two is made, the other waits
    sim.config.retry_after = 0.5
    journal = tmp_path / "j.sqlite"
    client = make_client(callbacks=True, create_attempts=1000)

    async def run_batch() -> list[bool]:
        return [i.ok async for i in client.edit_many([request(0), request(1)], journal=journal)]

    batch = asyncio.create_task(run_batch())
    # Both were sent (each after its row was committed); the 429'd one's row is gone.
    await until(lambda: sim.stats.rate_limited >= 1 and len(journal_states(journal)) == 1, 5)
    assert set(journal_states(journal).values()) <= {"accepted", "succeeded"}
    sim.config.create_limit = None
    assert await batch == [True, True]
    assert set(sim.stats.tasks_per_request.values()) == {1}
    with Journal(journal) as j:
        assert j.counts() == {Stage.SUCCEEDED: 2}


HOOKS = "https://hooks.example/a"


@pytest.mark.parametrize(
    ("journaled", "listening", "waited"),
    [
        (HOOKS, HOOKS, 0.5),  # where its callbacks go: the visibility grace
        (None, HOOKS, 0.5),  # a journal that does not say: the same
        ("https://hooks.example/b", HOOKS, 0.0),  # elsewhere: it cannot hear them
        (HOOKS, None, 0.0),  # polling: nothing can call back
    ],
)
async def test_a_rerun_waits_only_the_grace_for_what_may_have_been_sent(
    sim: Simulator,
    make_client: ClientFactory,
    tmp_path: Path,
    *,
    journaled: str | None,
    listening: str | None,
    waited: float,
) -> None:
    """Issue 32 §1: a row a killed run left ``sending`` (possibly on the wire) waited for
    its callback until the deadline (900 s), sending nothing meanwhile. Now the grace, and
    only where its callbacks can arrive; never resubmitted either way."""
    journal = tmp_path / "j.sqlite"
    with Journal(journal) as j:
        if journaled is not None:
            j.callbacks_go_to(CallbackReceiver(public_url=journaled).url_string(""))
        j.sending(0, request(0), "t" * 24)
    receiver = CallbackReceiver(public_url=listening) if listening else False
    client = make_client(callbacks=receiver, visibility_grace=waited or 600.0)
    progress = BatchProgress()
    async with asyncio.timeout(60):  # far below the 900 s deadline
        items = [
            i async for i in client.edit_many([request(0)], journal=journal, progress=progress)
        ]
    assert [item.status for item in items] == ["unknown"]
    assert (progress.may_exist, progress.may_exist_wait) == (1, waited)
    assert progress.awaiting_callbacks == 0
    assert sim.stats.create_requests == 0
    with Journal(journal) as j:
        assert j.counts() == {Stage.UNKNOWN: 1}
