"""
A sliding-window rate limiter shared by every coroutine of a client.

It keeps the times of the last ``rate`` grants and at most one timer handle, grants waiters
first come first served, reads the event loop's clock (so tests can drive time), and refunds
a grant whose waiter was cancelled before it could use it. ``pause_until`` stops every grant
until a given loop time: a 429 pauses the whole pipeline, not one coroutine.
"""

from __future__ import annotations

import asyncio
from collections import deque


class SlidingWindowLimiter:
    """At most ``rate`` grants in any ``period`` seconds, first come first served."""

    __slots__ = ("_grants", "_paused_until", "_timer", "_waiters", "period", "rate")

    def __init__(self, rate: int, period: float) -> None:
        if rate < 1 or period <= 0:
            raise ValueError("rate must be >= 1 and period > 0")
        self.rate = rate
        self.period = period
        self._grants: deque[float] = deque()
        self._waiters: deque[asyncio.Future[float]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._paused_until = 0.0

    async def acquire(self) -> None:
        """Wait for a grant; cancelling the wait never consumes one."""
        loop = asyncio.get_running_loop()
        if not self._waiters and self._free_at(loop.time()) is None:
            self._grants.append(loop.time())
            return
        waiter: asyncio.Future[float] = loop.create_future()
        self._waiters.append(waiter)
        self._schedule(loop)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._refund(waiter.result())
            raise

    def pause_until(self, when: float) -> None:
        """Grant nothing before loop time ``when`` (a 429 with its Retry-After)."""
        self._paused_until = max(self._paused_until, when)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._waiters:
            self._schedule(asyncio.get_running_loop())

    def _free_at(self, now: float) -> float | None:
        """Return when the next grant is possible, or None if it is possible now."""
        grants = self._grants
        while grants and grants[0] <= now - self.period:
            grants.popleft()
        blocked = [self._paused_until] if self._paused_until > now else []
        if len(grants) >= self.rate:
            blocked.append(grants[0] + self.period)
        return max(blocked) if blocked else None

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None:
            self._timer = loop.call_at(loop.time(), self._wake)

    def _wake(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        waiters = self._waiters
        while waiters:
            if waiters[0].done():  # cancelled while queued
                waiters.popleft()
                continue
            now = loop.time()
            free_at = self._free_at(now)
            if free_at is not None:
                self._timer = loop.call_at(free_at, self._wake)
                return
            self._grants.append(now)
            waiters.popleft().set_result(now)

    def _refund(self, granted_at: float) -> None:
        if granted_at in self._grants:
            self._grants.remove(granted_at)
        if self._waiters:
            self._schedule(asyncio.get_running_loop())
