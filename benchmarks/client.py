"""
The client side of each benchmark, run in a process of its own: prints one JSON line.

``python -m benchmarks.client MODE --url SERVICE [...]``; the driver (``benchmarks.run``)
hosts the simulator in another process, so client and service share the machine's cores
as they would in production.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
from yarl import URL

from benchmarks.baseline import Baseline, bounded
from seedream_async import (
    CallbackReceiver,
    EditRequest,
    EditResult,
    PollSchedule,
    SeedreamClient,
    Settings,
)
from seedream_async._allocator import warm_allocator
from seedream_async._journal import Journal

#: No createTask limit: the overhead runs measure the SDK, not the account.
UNLIMITED = Settings(create_rate=10_000_000, create_period=1.0, query_rate=10_000)
PAGE = os.sysconf("SC_PAGE_SIZE")


def request(i: int) -> EditRequest:
    """The i-th input, built when asked: the bare loop also builds its body from a counter."""
    return EditRequest(prompt=f"edit number {i}", image_urls=[f"https://img.example/{i}.png"])


def requests(n: int) -> Iterator[EditRequest]:
    for i in range(n):
        yield request(i)


def rss() -> int:
    """Resident memory now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Timer:
    """Wall and CPU seconds of a block."""

    def __init__(self) -> None:
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Timer:
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def sdk_client(url: URL, in_flight: int, settings: Settings = UNLIMITED) -> SeedreamClient:
    return SeedreamClient(
        "bench",
        base_url=url,
        callbacks=CallbackReceiver(),
        settings=attrs.evolve(settings, max_in_flight=in_flight),
    )


# --- 1. overhead ------------------------------------------------------------------------


async def overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Client CPU per task; with ``--rounds R``, R measured runs, each when the driver asks.

    Rounds: the process stays up (warm, connected) and runs ``n`` tasks each time a line
    comes on stdin, printing one JSON line per round. The driver keeps several such
    processes per variant and asks each in turn, so the variants take turns every second or
    so: the machine's slow phases, which last seconds, then fall on every variant alike.
    """
    url, n, k = URL(args.url), args.n, args.in_flight
    async with _overhead_work(url, args.variant, k) as work:
        await work(min(200, n))
        if not args.rounds:
            with Timer() as t:
                await work(n)
            return _overhead_row(t, n)
        asks = await _stdin_lines()
        for _ in range(args.rounds):
            if not await asks.readline():
                break  # the driver is gone
            with Timer() as t:
                await work(n)
            print(json.dumps(_overhead_row(t, n)), flush=True)
    return {"rounds": args.rounds}


def _overhead_row(t: Timer, n: int) -> dict[str, Any]:
    return {"wall": t.wall, "cpu": t.cpu, "n": n, "gc": gc.get_stats()[2]["collections"]}


@contextlib.asynccontextmanager
async def _overhead_work(
    url: URL, variant: str, in_flight: int
) -> AsyncIterator[Callable[[int], Awaitable[None]]]:
    """``work(n)``: n tasks of ``variant``, ``in_flight`` at a time, on one warm client."""
    if variant == "baseline":
        base = Baseline(url)
        await base.start()
        try:
            yield lambda n: base.run(n, in_flight)
        finally:
            await base.close()
        return
    async with sdk_client(url, in_flight) as client:
        yield lambda n: drive(client, variant, n, in_flight)


async def _stdin_lines() -> asyncio.StreamReader:
    """Standard input as a stream the event loop reads (the loop never blocks on it)."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def drive(client: SeedreamClient, variant: str, n: int, in_flight: int) -> None:
    if variant.startswith("edit_many"):
        with tempfile.TemporaryDirectory() as tmp:
            journal = Path(tmp) / "bench.journal" if variant == "edit_many_journal" else None
            done = 0
            async for item in client.edit_many(requests(n), journal=journal):
                assert item.ok, item.error
                done += 1
        assert done == n
        return
    # Each request is built in its own task, as a service handler builds it: a list built up
    # front would keep n requests alive for the cyclic GC to scan all run long (the bare loop
    # keeps no input either).
    await bounded(lambda i: client.edit(request(i)), n, in_flight)


# --- 2. memory ----------------------------------------------------------------------------


async def memory(args: argparse.Namespace) -> dict[str, Any]:
    """Client memory per task parked in flight (the service answers much later)."""
    url, n = URL(args.url), args.n
    if args.variant == "baseline":
        base = Baseline(url)
        await base.start()
        idle = settle_rss()
        sending = asyncio.Semaphore(100)  # the parked state, not a burst of n requests
        tasks = [asyncio.create_task(base.one(i, sending)) for i in range(n)]
        while base.answered < n:  # noqa: ASYNC110 (a counter, no event: benchmark only)
            await asyncio.sleep(0.05)
        busy = settle_rss()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await base.close()
    else:
        async with sdk_client(url, n) as client:
            await client.credits()  # session and receiver up
            idle = settle_rss()
            sending = asyncio.Semaphore(100)  # the parked state, not a burst of n requests
            submitted = 0

            # The bare loop's shape: one task per edit, which builds its input, sends it
            # (at most 100 at once) and waits for its result.
            async def one(i: int) -> EditResult:
                nonlocal submitted
                async with sending:
                    handle = await client.submit(request(i))
                submitted += 1
                return await handle.result()

            parked = [asyncio.create_task(one(i)) for i in range(n)]
            while submitted < n:  # noqa: ASYNC110 (a counter, no event: benchmark only)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            assert client.in_flight == n
            busy = settle_rss()
            for edit in parked:
                edit.cancel()
            await asyncio.gather(*parked, return_exceptions=True)
    return {"n": n, "idle": idle, "busy": busy, "per_task": (busy - idle) / n}


def settle_rss() -> int:
    gc.collect()
    return rss()


async def batch_peak(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory of a whole batch at a fixed max_in_flight."""
    async with sdk_client(URL(args.url), args.in_flight) as client:
        with Timer() as t:
            done = 0
            async for _ in client.edit_many(requests(args.n)):
                done += 1
    assert done == args.n
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"n": args.n, "peak": peak_kb * 1024, "wall": t.wall}


# --- 3. rate limit efficiency -------------------------------------------------------------


async def rate(args: argparse.Namespace) -> dict[str, Any]:
    settings = attrs.evolve(UNLIMITED, create_rate=args.rate, create_period=args.period)
    async with sdk_client(URL(args.url), args.n, settings) as client:
        await client.credits()
        with Timer() as t:
            await asyncio.gather(*(client.create_task(r) for r in requests(args.n)))
    return {"n": args.n, "wall": t.wall}


# --- 4. callback to wake latency ----------------------------------------------------------


class StampingReceiver(CallbackReceiver):
    """Notes when each callback reaches the SDK's handler."""

    def __init__(self) -> None:
        super().__init__()
        self.arrived: dict[str, float] = {}

    def _judge(self, method: str, token: str, body: bytes, headers: Any) -> Any:
        # Every path (embedded app, handle, ahandle) judges a request exactly once, first.
        self.arrived[token] = time.perf_counter()
        return super()._judge(method, token, body, headers)


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    receiver = StampingReceiver()
    settings = attrs.evolve(UNLIMITED, max_in_flight=args.n)
    woke: dict[str, float] = {}
    async with SeedreamClient(
        "bench", base_url=URL(args.url), callbacks=receiver, settings=settings
    ) as client:

        async def one(request: EditRequest) -> None:
            handle = await client.submit(request)
            await handle.result()
            assert handle.token is not None
            woke[handle.token] = time.perf_counter()

        await asyncio.gather(*(one(r) for r in requests(args.n)))
    gaps = sorted((woke[t] - receiver.arrived[t]) * 1000 for t in woke)
    return {
        "n": len(gaps),
        "p50_ms": statistics.median(gaps),
        "p99_ms": gaps[int(len(gaps) * 0.99) - 1],
        "max_ms": gaps[-1],
    }


# --- 5. polling ---------------------------------------------------------------------------


async def polling(args: argparse.Namespace) -> dict[str, Any]:
    # The vendor's schedule, ten times faster, so the run stays short.
    schedule = PollSchedule(steps=((3.0, 0.25), (12.0, 0.75), (float("inf"), 2.0)))
    settings = attrs.evolve(
        UNLIMITED,
        query_rate=args.rate,
        query_period=1.0,
        poll_schedule=schedule,
        max_in_flight=args.n,
    )
    async with SeedreamClient("bench", base_url=URL(args.url), settings=settings) as client:
        with Timer() as t:
            results = await asyncio.gather(*(client.edit(r) for r in requests(args.n)))
    return {"n": len(results), "wall": t.wall}


# --- 7. uploads -----------------------------------------------------------------------------


async def uploads(args: argparse.Namespace) -> dict[str, Any]:
    """Peak memory and throughput uploading ``--n`` distinct files of ``--size`` bytes."""
    settings = attrs.evolve(UNLIMITED, upload_rate=10_000)
    block = os.urandom(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        rest = memoryview(block)[16:]
        for i in range(args.n):
            path = Path(tmp) / f"{i:05d}.png"
            with path.open("wb") as f:  # no 5 MB copies here: only the SDK's memory counts
                f.write(b"\x89PNG\r\n\x1a\n" + i.to_bytes(8, "big"))
                f.write(rest)
            files.append(path)
        rest.release()
        del block
        async with SeedreamClient("bench", base_url=URL(args.url), settings=settings) as client:
            await client.credits()
            # Warm up (the allocator's arenas in the read threads), then measure the peak of
            # the run itself: the process's high-water mark is reset where Linux allows.
            await asyncio.gather(*(client.upload(f) for f in files[:WARM_UPLOADS]))
            reset = reset_peak_rss()
            with Timer() as t:
                await asyncio.gather(*(client.upload(f) for f in files[WARM_UPLOADS:]))
    measured = args.n - WARM_UPLOADS
    return {"n": measured, "size": args.size, "wall": t.wall, "peak": peak_rss(), "reset": reset}


WARM_UPLOADS = 20


def reset_peak_rss() -> bool:
    """Reset VmHWM (Linux: 5 > /proc/self/clear_refs); False where that is not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss() -> int:
    """The process's peak RSS since the last reset (VmHWM), else since it started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --- 6. journal writes -------------------------------------------------------------------


async def journal_writes(args: argparse.Namespace) -> dict[str, Any]:
    """Cost per ``sending`` row committed alone (fsynced) and grouped (100 to a commit, one
    fsync), and per grouped ``NORMAL`` update, on this disk."""
    with tempfile.TemporaryDirectory() as tmp, Journal(Path(tmp) / "j") as journal:
        batch = list(requests(args.n))
        with Timer() as alone:
            for index, request in enumerate(batch):
                journal.sending(index, request, None)
                journal.flush()
        journal.flush()
        offset, group = args.n, 100
        with Timer() as grouped:
            for start in range(0, args.n, group):
                for index in range(start, min(start + group, args.n)):
                    journal.sending(offset + index, batch[index], None)
                journal.flush()
        with Timer() as accepted:
            for start in range(0, args.n, group):
                for index in range(start, min(start + group, args.n)):
                    journal.accepted(index, f"task_{index}")
                journal.flush()
    return {
        "n": args.n,
        "sending_us": 1e6 * alone.wall / args.n,
        "sending_grouped_us": 1e6 * grouped.wall / args.n,
        "accepted_us": 1e6 * accepted.wall / args.n,
    }


async def million(args: argparse.Namespace) -> dict[str, Any]:
    """A batch of ``n`` inputs with a journal (``--journal``), 100 in flight: peak RSS, CPU."""
    async with sdk_client(URL(args.url), args.in_flight) as client:
        with Timer() as t:
            done = 0
            async for item in client.edit_many(requests(args.n), journal=Path(args.journal)):
                assert item.ok, item.error
                done += 1
    assert done == args.n
    return {"n": args.n, "wall": t.wall, "cpu": t.cpu, "peak": peak_rss()}


async def resume(args: argparse.Namespace) -> dict[str, Any]:
    """Rerun a finished batch on its journal: every input skipped, nothing sent."""
    async with sdk_client(URL(args.url), args.in_flight) as client:
        with Timer() as t:
            skipped = 0
            async for item in client.edit_many(requests(args.n), journal=Path(args.journal)):
                assert item.from_journal, item
                skipped += 1
    return {"n": args.n, "skipped": skipped, "wall": t.wall, "cpu": t.cpu, "peak": peak_rss()}


MODES = {
    "million": million,
    "resume": resume,
    "overhead": overhead,
    "memory": memory,
    "batch_peak": batch_peak,
    "rate": rate,
    "latency": latency,
    "polling": polling,
    "journal_writes": journal_writes,
    "uploads": uploads,
}


def main() -> None:
    if cpu := os.environ.get("BENCH_CLIENT_CPU"):
        os.sched_setaffinity(0, {int(cpu)})
    # Every client, the bare loop's included, starts with glibc's mmap threshold above
    # asyncio's 256 KiB read buffer. Left to chance, a process either pays mmap, mremap and
    # munmap for every socket read (~35 us of kernel time per task) or does not, depending on
    # whether it happened to free a large block: that split CPU time per task into two modes,
    # most of this machine's "noise" between runs (seedream_async/_allocator.py).
    warm_allocator()
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--url", required=True)
    parser.add_argument("--variant", default="edit_many")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=0, help="overhead: rounds asked on stdin")
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--size", type=int, default=5 * 1024 * 1024)
    parser.add_argument("--period", type=float, default=1.0)
    parser.add_argument("--journal", help="the journal file (million, resume)")
    parser.add_argument(
        "--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the event loop"
    )
    args = parser.parse_args()
    factory = None
    if args.loop == "uvloop":
        import uvloop  # noqa: PLC0415 (the speed extra)

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        print(json.dumps(runner.run(MODES[args.mode](args))))


if __name__ == "__main__":
    main()
