"""edit_many: laziness, per-item outcomes, ordering, early exit, the journal, downloads."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from seedream_async import (
    BatchItem,
    BatchProgress,
    DownloadError,
    EditRequest,
    InvalidRequest,
    JournalBusy,
    JournalMismatch,
    SeedreamClient,
    Settings,
)
from seedream_async._downloads import Downloader
from seedream_async._journal import Journal, Stage
from seedream_async.simulator import Simulator, fake_png
from tests.conftest import ClientFactory, request, until


class Counting:
    """An endless generator of requests that counts how many were pulled."""

    def __init__(self) -> None:
        self.pulled = 0

    def __iter__(self) -> Iterator[EditRequest]:
        for n in itertools.count():
            self.pulled += 1
            yield request(n)


async def collect(client: SeedreamClient, inputs: object, **kw: object) -> list[BatchItem]:
    return [item async for item in client.edit_many(inputs, **kw)]  # type: ignore[arg-type]


def released(journal: Path) -> bool:
    """True once no run holds ``journal`` (a batch lets go of it when its last task ends)."""
    try:
        Journal(journal).close()
    except JournalBusy:
        return False
    return True


async def wait_idle(client: SeedreamClient) -> None:
    await until(lambda: client.in_flight == 0)


async def test_lazy_and_bounded(sim: Simulator, make_client: ClientFactory) -> None:
    """An endless input: memory follows max_in_flight, not the input's length."""
    sim.config.latency = (0.01, 0.03)
    client = make_client(callbacks=True, max_in_flight=8)
    source = Counting()
    seen = 0
    async for _ in client.edit_many(source):
        seen += 1
        assert source.pulled <= seen + 8
        if seen == 40:
            break
    assert source.pulled <= 48
    await wait_idle(client)
    assert sim.stats.tasks_created <= 48


async def test_async_iterable_input(sim: Simulator, make_client: ClientFactory) -> None:
    async def inputs() -> AsyncIterator[EditRequest]:
        for n in range(10):
            yield request(n)

    items = await collect(make_client(callbacks=True), inputs())
    assert sorted(i.index for i in items) == list(range(10))
    assert all(i.ok for i in items)


async def test_every_input_one_item(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.failure_rate = 0.4
    sim.config.latency = (0.0, 0.05)
    progress = BatchProgress(total=31)
    inputs: list[object] = [request(n) for n in range(30)]
    inputs.insert(7, "not a request")
    items = await collect(make_client(callbacks=True), inputs, progress=progress)
    assert sorted(i.index for i in items) == list(range(31))
    by_status = {s: [i for i in items if i.status == s] for s in ("succeeded", "failed", "error")}
    assert [i.index for i in by_status["error"]] == [7]
    assert by_status["failed"]
    assert by_status["succeeded"]
    assert all(i.result and i.result.urls for i in by_status["succeeded"])
    assert progress.done == 31
    assert progress.running == 0
    assert (progress.succeeded, progress.failed, progress.errors) == (
        len(by_status["succeeded"]),
        len(by_status["failed"]),
        1,
    )
    assert progress.credits == pytest.approx(sim.config.price * progress.succeeded)
    assert progress.rate > 0


async def test_ordered(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.latency = (0.0, 0.1)
    items = await collect(
        make_client(callbacks=True, max_in_flight=6), (request(n) for n in range(25)), ordered=True
    )
    assert [i.index for i in items] == list(range(25))


async def test_break_keeps_accepted_tasks_tracked(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    sim.config.latency = (0.1, 0.3)
    client = make_client(callbacks=True, max_in_flight=10)
    journal = tmp_path / "j.sqlite"
    async for _ in client.edit_many(Counting(), journal=journal):
        break
    created = sim.stats.tasks_created

    # The adopted items journal their outcome after the break; the run holds the journal
    # until the last of them is written, then lets go of it.
    await until(lambda: released(journal))
    with Journal(journal) as j:
        assert set(j.counts()) == {Stage.SUCCEEDED}
        assert j.counts()[Stage.SUCCEEDED] == created
    assert sim.stats.tasks_created == created  # no new submissions after the break
    assert client.in_flight == 0


async def test_stopped_while_create_answers_are_out_every_sent_task_is_kept(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Stopped while createTasks are on the wire, with nothing to call back: every task the
    service made is still polled to its end and journaled; none is lost or sent twice."""
    sim.config.create_answer_delay = 0.3
    client = make_client(max_in_flight=6)
    journal = tmp_path / "j.sqlite"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await collect(client, Counting(), journal=journal)
    assert sim.stats.tasks_created == 6  # made, their answers still on the way

    await until(lambda: released(journal))
    with Journal(journal) as j:
        assert j.counts() == {Stage.SUCCEEDED: 6}
    assert sim.stats.create_requests == 6
    assert client.in_flight == 0


async def test_rerun_pays_nothing_twice(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    sim.config.failure_rate = 0.3
    journal = tmp_path / "j.sqlite"
    first = await collect(
        make_client(callbacks=True), [request(n) for n in range(20)], journal=journal
    )
    created = sim.stats.create_requests
    again = await collect(make_client(), [request(n) for n in range(20)], journal=journal)
    assert sim.stats.create_requests == created
    assert all(i.from_journal for i in again)
    assert {i.index: i.status for i in first} == {i.index: i.status for i in again}
    ok = {i.index: i.result.urls for i in first if i.result}
    assert ok == {i.index: i.result.urls for i in again if i.result}


async def test_rerun_after_close_mid_flight(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    sim.config.latency = (0.3, 0.3)
    journal = tmp_path / "j.sqlite"
    inputs = [request(n) for n in range(5)]
    first = make_client(callbacks=True)
    batch = asyncio.create_task(collect(first, inputs, journal=journal))
    await until(lambda: sim.stats.tasks_created == 5)
    await asyncio.sleep(0.02)
    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    await first.aclose()  # the accepted tasks were still running
    with Journal(journal) as j:
        assert j.counts() == {Stage.ACCEPTED: 5}
    items = await collect(make_client(), inputs, journal=journal)  # polling, another "process"
    assert all(i.ok for i in items)
    assert sim.stats.create_requests == 5
    with Journal(journal) as j:
        assert j.counts() == {Stage.SUCCEEDED: 5}


async def test_unanswered_submission_is_never_resubmitted(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    with Journal(journal) as j:
        j.sending(0, request(0), token=None)  # a run killed right after sending
    items = await collect(make_client(), [request(0), request(1)], journal=journal)
    status = {i.index: i.status for i in items}
    assert status == {0: "unknown", 1: "succeeded"}
    assert sim.stats.create_requests == 1
    again = await collect(make_client(), [request(0), request(1)], journal=journal)
    assert {i.index: i.status for i in again} == status
    assert sim.stats.create_requests == 1


async def test_rejected_before_creation_is_sent_on_rerun(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    sim.config.credits = 0.0
    items = await collect(make_client(), [request(0)], journal=journal)
    assert items[0].status == "error"
    sim.config.credits = 100.0
    items = await collect(make_client(), [request(0)], journal=journal)
    assert items[0].ok
    assert sim.stats.tasks_created == 1


async def test_journal_of_another_batch_is_refused(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    await collect(make_client(), [request(0)], journal=journal)
    with pytest.raises(JournalMismatch, match="another batch"):
        await collect(make_client(), [request(99)], journal=journal)
    assert sim.stats.create_requests == 1


async def test_downloads(sim: Simulator, make_client: ClientFactory, tmp_path: Path) -> None:
    sim.config.images_per_task = 2
    journal, images = tmp_path / "j.sqlite", tmp_path / "images"
    items = await collect(
        make_client(callbacks=True),
        [request(n) for n in range(4)],
        journal=journal,
        download_to=images,
    )
    for item in items:
        assert item.result is not None
        assert [f.name for f in item.files] == [
            f"{item.index:06d}_0.png",
            f"{item.index:06d}_1.png",
        ]
        for n, f in enumerate(item.files):
            assert f.read_bytes() == fake_png(item.result.task_id, n, sim.config.image_size)
    assert sim.stats.downloads == 8
    assert not list(images.glob(".*.part"))  # no temporary files left
    again = await collect(
        make_client(), [request(n) for n in range(4)], journal=journal, download_to=images
    )
    assert all(i.ok and len(i.files) == 2 for i in again)
    assert sim.stats.downloads == 8  # complete files are skipped on resume


async def test_failing_download_retried_on_rerun(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    journal, images = tmp_path / "j.sqlite", tmp_path / "images"
    sim.config.file_status = 503
    (item,) = await collect(
        make_client(query_attempts=2), [request(0)], journal=journal, download_to=images
    )
    assert item.status == "download_failed"
    assert isinstance(item.error, DownloadError)
    assert item.result is not None  # the URLs survive the failed download
    sim.config.file_status = 200
    (item,) = await collect(make_client(), [request(0)], journal=journal, download_to=images)
    assert item.ok
    assert item.files[0].exists()
    assert sim.stats.tasks_created == 1


async def test_single_download(sim: Simulator, make_client: ClientFactory, tmp_path: Path) -> None:
    client = make_client()
    result = await client.edit(request(0))
    (path,) = await client.download(result, tmp_path)
    assert path.name == f"{result.task_id}_0.png"
    assert path.stat().st_size == sim.config.image_size


async def test_download_limits(sim: Simulator, tmp_path: Path) -> None:
    async with aiohttp.ClientSession() as session:
        settings = Settings(query_attempts=1, allow_private_downloads=True)
        downloader = Downloader(session, settings, max_bytes=100)
        with pytest.raises(DownloadError, match="http"):
            await downloader.fetch(URL("file:///etc/passwd"), tmp_path, "x", "task")
        async with SeedreamClient("k", base_url=sim.url) as client:
            task_id = await client.create_task(request(0))
        url = sim.record(task_id).result_urls[0]
        with pytest.raises(DownloadError, match="larger than 100 bytes"):
            await downloader.fetch(url, tmp_path, "big.png", task_id)
        with pytest.raises(DownloadError, match="HTTP 404"):
            await downloader.fetch(url.with_name("9.png"), tmp_path, "missing.png", task_id)
    assert list(tmp_path.iterdir()) == []


async def test_retry_failed_needs_a_journal(make_client: ClientFactory) -> None:
    client = make_client()
    with pytest.raises(InvalidRequest, match="retry_failed"):
        async for _ in client.edit_many([request(0)], retry_failed=True):
            pass
