"""The sliding-window limiter, driven by a virtual loop clock: no test sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from seedream_async import ClientClosed
from seedream_async._limits import SlidingWindowLimiter, Slots

Advance = Callable[[float], None]


async def settle() -> None:
    """Let every ready callback and the timers now due run."""
    for _ in range(5):
        await asyncio.sleep(0)


def grab(limiter: SlidingWindowLimiter, log: list[int], n: int) -> asyncio.Task[None]:
    async def one() -> None:
        await limiter.acquire()
        limiter.release()
        log.append(n)

    return asyncio.create_task(one())


async def test_burst_then_window(virtual_clock: Advance) -> None:
    limiter = SlidingWindowLimiter(3, 10.0)
    log: list[int] = []
    tasks = [grab(limiter, log, i) for i in range(7)]
    await settle()
    assert log == [0, 1, 2]
    virtual_clock(9.9)
    await settle()
    assert log == [0, 1, 2]
    virtual_clock(0.2)
    await settle()
    assert log == [0, 1, 2, 3, 4, 5]
    virtual_clock(10.0)
    await settle()
    assert log == list(range(7))
    await asyncio.gather(*tasks)


async def test_window_slides_not_resets(virtual_clock: Advance) -> None:
    limiter = SlidingWindowLimiter(2, 10.0)
    log: list[int] = []
    grab(limiter, log, 0)
    await settle()
    virtual_clock(5.0)
    tasks = [grab(limiter, log, i) for i in (1, 2)]
    await settle()
    assert log == [0, 1]
    virtual_clock(5.1)  # grant 0 left the window, grant 1 has not
    await settle()
    assert log == [0, 1, 2]
    await asyncio.gather(*tasks)


async def test_cancelled_waiter_loses_its_place_not_a_grant(virtual_clock: Advance) -> None:
    limiter = SlidingWindowLimiter(1, 1.0)
    log: list[int] = []
    grab(limiter, log, 0)
    first, second = grab(limiter, log, 1), grab(limiter, log, 2)
    await settle()
    first.cancel()
    virtual_clock(1.01)
    await settle()
    assert log == [0, 2]
    assert first.cancelled()
    await second


async def test_cancel_after_grant_refunds(virtual_clock: Advance) -> None:
    limiter = SlidingWindowLimiter(1, 1.0)
    await limiter.acquire()
    log: list[int] = []
    waiter = grab(limiter, log, 1)
    await settle()
    # A refund grants the waiter, which is cancelled before it runs: the grant comes back.
    limiter.release(sent=False)
    await asyncio.sleep(0)
    waiter.cancel()
    await settle()
    assert waiter.cancelled()
    third = grab(limiter, log, 3)
    await settle()
    assert log == [3]
    await third


async def test_window_starts_when_request_completes(virtual_clock: Advance) -> None:
    """A held grant blocks the next one until released, then counts a period from then."""
    limiter = SlidingWindowLimiter(1, 1.0)
    await limiter.acquire()
    log: list[int] = []
    waiter = grab(limiter, log, 1)
    virtual_clock(5.0)
    await settle()
    assert log == []  # still in flight: the service may not have counted it yet
    limiter.release()
    virtual_clock(0.99)
    await settle()
    assert log == []
    virtual_clock(0.02)
    await settle()
    assert log == [1]
    await waiter


async def test_pause_until_blocks_everyone(virtual_clock: Advance) -> None:
    limiter = SlidingWindowLimiter(100, 1.0)
    loop = asyncio.get_running_loop()
    limiter.pause_until(loop.time() + 5.0)
    log: list[int] = []
    tasks = [grab(limiter, log, i) for i in range(3)]
    await settle()
    assert log == []
    virtual_clock(5.01)
    await settle()
    assert log == [0, 1, 2]
    await asyncio.gather(*tasks)


async def test_fifo_under_contention(virtual_clock: Advance) -> None:
    limiter = SlidingWindowLimiter(1, 1.0)
    log: list[int] = []
    tasks = [grab(limiter, log, i) for i in range(5)]
    for _ in range(5):
        await settle()
        virtual_clock(1.01)
    await settle()
    assert log == [0, 1, 2, 3, 4]
    await asyncio.gather(*tasks)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="rate"):
        SlidingWindowLimiter(0, 1.0)


async def test_slots_are_taken_in_turn_and_never_past_a_waiter() -> None:
    """``take`` is ``acquire`` without waiting: it never jumps the queue, nor takes from a
    closed ``Slots``; a slot handed back goes to the longest waiter."""
    slots = Slots(2)
    assert slots.take()
    assert slots.take()
    assert not slots.take()
    waiter = asyncio.create_task(slots.acquire())
    await settle()
    slots.release()
    assert not slots.take()  # the waiter has it
    await waiter
    slots.release()
    assert slots.take()
    slots.release()
    slots.close()
    assert not slots.take()
    with pytest.raises(ClientClosed):
        await slots.acquire()


async def test_take_grants_at_once_only_what_acquire_would() -> None:
    """``take()``, the transport's way in without a coroutine, never jumps the queue, never
    grants past the window and never grants after close."""
    limiter = SlidingWindowLimiter(2, 10.0)
    assert limiter.take()
    assert limiter.take()
    assert not limiter.take()  # the window is full
    limiter.release(sent=False)  # refunded
    assert limiter.take()
    log: list[int] = []
    waiting = grab(limiter, log, 0)
    await settle()
    assert log == []
    limiter.release(sent=False)
    limiter.release(sent=False)  # room for two now
    assert not limiter.take()  # but a waiter is first (its wake-up queued, not yet run)
    await settle()
    assert log == [0]
    assert limiter.take()
    limiter.release(sent=False)  # room again: closed, nothing is granted all the same
    limiter.close()
    assert not limiter.take()
    with pytest.raises(ClientClosed):
        await limiter.acquire()
    await waiting
