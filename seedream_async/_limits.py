"""
A sliding-window rate limiter shared by every coroutine of a client.

The service counts a request when it *arrives*; the client only knows it has arrived once the
answer is back. So a grant holds its slot while the request is in flight, and ``release()``
stamps it at completion: the window then starts no earlier than the service's did, and a
client using the service's own limit never sees a 429 (at the price of one round trip per
window). A grant whose request was never sent is refunded.

It keeps at most ``rate`` stamps and one timer handle, grants waiters first come first served,
reads the event loop's clock (so tests can drive time), and ``pause_until`` stops every grant
until a given loop time: a 429 pauses the whole pipeline, not one coroutine.

``Slots`` bounds how many tasks are accepted and not yet final (``max_in_flight``). Both are
closed with their client: every waiter, queued or future, gets ``ClientClosed``.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Protocol

from ._errors import ClientClosed

_CLOSED = "the client was closed while this request waited for its turn"


class Limiter(Protocol):
    """What the transport needs of a rate limit: in-process, or shared by a fleet (Redis)."""

    def take(self) -> bool:
        """Take a grant (``None``) if one is free now and nobody waits; else False, and the
        caller awaits ``acquire()``. No coroutine is made for the usual free grant."""

    async def acquire(self) -> object:
        """Wait for a grant; cancelling the wait costs nothing."""

    def release(self, grant: object = None, *, sent: bool = True) -> None:
        """End a grant: a ``sent`` one counts for a period from now, another is refunded."""

    def pause_until(self, when: float) -> None:
        """Grant nothing before loop time ``when`` (a 429 with its Retry-After)."""

    def close(self) -> None:
        """Grant nothing more: every waiter, now or later, gets ``ClientClosed``."""


class SlidingWindowLimiter:
    """At most ``rate`` requests in any ``period`` seconds, first come first served."""

    __slots__ = (
        "_closed",
        "_held",
        "_loop",
        "_paused_until",
        "_stamps",
        "_timer",
        "_waiters",
        "period",
        "rate",
    )

    def __init__(self, rate: int, period: float) -> None:
        if rate < 1 or period <= 0:
            raise ValueError("rate must be >= 1 and period > 0")
        self.rate = rate
        self.period = period
        self._stamps: deque[float] = deque()
        self._held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._timer: asyncio.Handle | None = None
        self._paused_until = 0.0
        self._closed = False
        #: The event loop it runs on, once known (its clock and its timers).
        self._loop: asyncio.AbstractEventLoop | None = None

    def take(self) -> bool:
        """Take a grant if one is free now and nobody waits (no coroutine made); else False."""
        if self._closed or self._waiters:
            return False  # ``acquire()`` queues, or raises ``ClientClosed``
        if self._wait(self._running_loop().time()) == 0:
            self._held += 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a grant; pair it with ``release()``. Cancelling the wait costs nothing."""
        if self._closed:
            raise ClientClosed(_CLOSED)
        loop = self._running_loop()
        if not self._waiters and self._wait(loop.time()) == 0:
            self._held += 1
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        self._wake_soon(loop)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(sent=False)
            raise

    def release(self, grant: object = None, *, sent: bool = True) -> None:
        """End a grant: a ``sent`` one counts for a period from now, another is refunded."""
        loop = self._running_loop()
        self._held -= 1
        if sent:
            self._stamps.append(loop.time())
        if self._waiters:
            self._wake_soon(loop, reschedule=True)

    def close(self) -> None:
        """Grant nothing more: every waiter, now or later, gets ``ClientClosed``."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ClientClosed(_CLOSED))

    def pause_until(self, when: float) -> None:
        """Grant nothing before loop time ``when`` (a 429 with its Retry-After)."""
        self._paused_until = max(self._paused_until, when)
        if self._waiters:
            self._wake_soon(asyncio.get_running_loop(), reschedule=True)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        """The running loop, asked once (on Python 3.11 every ask is a ``getpid()`` call)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop

    def _wait(self, now: float) -> float:
        """Seconds until a grant is possible: 0 for now, inf until a release."""
        stamps = self._stamps
        while stamps and stamps[0] <= now - self.period:
            stamps.popleft()
        wait = max(0.0, self._paused_until - now)
        if len(stamps) + self._held >= self.rate:
            wait = max(wait, stamps[0] + self.period - now if stamps else math.inf)
        return wait

    def _wake_soon(self, loop: asyncio.AbstractEventLoop, *, reschedule: bool = False) -> None:
        if self._timer is not None and reschedule:
            self._timer.cancel()
            self._timer = None
        if self._timer is None:
            self._timer = loop.call_soon(self._wake)

    def _wake(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        waiters = self._waiters
        while waiters:
            if waiters[0].done():  # cancelled while queued
                waiters.popleft()
                continue
            now = loop.time()
            wait = self._wait(now)
            if wait > 0:
                if wait != math.inf:
                    self._timer = loop.call_at(now + wait, self._wake)
                return
            self._held += 1
            waiters.popleft().set_result(None)


class Slots:
    """
    At most ``limit`` holders at once, first come first served; closable.

    Unlike ``asyncio.Semaphore``, closing it fails every waiter with ``ClientClosed``, so a
    submission queued for ``max_in_flight`` never goes out after its client closed.
    """

    __slots__ = ("_closed", "_waiters", "free", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    def take(self) -> bool:
        """Take a slot if one is free now and nobody waits (no coroutine made); else False."""
        if self.free > 0 and not self._waiters and not self._closed:
            self.free -= 1
            return True
        return False

    async def acquire(self) -> None:
        """Wait for a slot; cancelling the wait costs nothing."""
        if self._closed:
            raise ClientClosed(_CLOSED)
        if self.take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release()  # granted and cancelled in the same breath: pass it on
            raise

    def release(self) -> None:
        """Return a slot, handing it straight to the longest waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1

    def close(self) -> None:
        """Grant nothing more: every waiter, now or later, gets ``ClientClosed``."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ClientClosed(_CLOSED))
