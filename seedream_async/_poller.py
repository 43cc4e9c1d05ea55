"""
One scheduler polling every pending task of a client: a heap of due times, one task.

Without callbacks it follows the vendor's schedule (frequent at first, backing off, with
jitter); with callbacks it is the safety net for lost ones, polling late and rarely. It also
enforces each task's deadline, so there is no timer or sleeping coroutine per task.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import random

from ._config import Settings
from ._errors import (
    ApiError,
    NotFound,
    RateLimited,
    RequestRejected,
    ServerError,
    TaskTimeout,
)
from ._transport import Transport
from ._waiters import Pending, Registry

log = logging.getLogger("seedream_async")

#: Compact the heap once this many of its entries belong to tasks already resolved.
_COMPACT_AFTER = 1024


class Poller:
    """Polls pending tasks by due time and expires them at their deadline."""

    def __init__(
        self, transport: Transport, registry: Registry, settings: Settings, *, safety_net: bool
    ) -> None:
        self._transport = transport
        self._registry = registry
        self._settings = settings
        #: With callbacks, polls only catch lost ones.
        self.safety_net = safety_net
        self._heap: list[tuple[float, int, Pending]] = []
        self._seq = itertools.count()
        self._stale = 0
        self._wake = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._polls: set[asyncio.Task[None]] = set()
        self._max_polls = max(4, 2 * settings.query_rate)

    def watch(self, pending: Pending, *, poll_now: bool = False) -> None:
        """Start polling ``pending`` (and enforcing its deadline)."""
        now = asyncio.get_running_loop().time()
        if pending.task_id is None:
            due = pending.deadline  # nothing to poll: only the deadline matters
        elif poll_now:
            due = now
        elif self.safety_net:
            due = pending.created + self._settings.safety_poll_after
        else:
            due = now + self._interval(pending, now)
        self._push(pending, due)
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="seedream-poller")

    def discard(self) -> None:
        """Note that a watched task was resolved; compact the heap when it is mostly stale."""
        self._stale += 1
        if self._stale > _COMPACT_AFTER and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].done and e[0] == e[2].due]
            heapq.heapify(self._heap)
            self._stale = 0

    async def aclose(self) -> None:
        """Stop polling; leaves no task running."""
        tasks = [*self._polls, *([self._runner] if self._runner else [])]
        self._runner = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._heap.clear()

    def _push(self, pending: Pending, due: float) -> None:
        due = min(due, pending.deadline)
        pending.due = due
        head = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (due, next(self._seq), pending))
        if head is None or due < head:
            self._wake.set()

    def _interval(self, pending: Pending, now: float) -> float:
        if self.safety_net:
            return self._settings.safety_poll_every
        schedule = self._settings.poll_schedule
        base = schedule.interval(now - pending.created)
        return base * (1 + random.uniform(-schedule.jitter, schedule.jitter))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while self._heap and self._heap[0][0] <= now and len(self._polls) < self._max_polls:
                due, _, pending = heapq.heappop(self._heap)
                if pending.done or due != pending.due:
                    continue
                if now >= pending.deadline:
                    self._expire(pending)
                else:
                    self._start_poll(pending)
            timeout = None
            if self._heap and len(self._polls) < self._max_polls:
                timeout = max(0.0, self._heap[0][0] - now)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _expire(self, pending: Pending) -> None:
        if pending.unknown is not None:
            self._registry.fail(pending, pending.unknown)
        else:
            deadline = pending.deadline - pending.created
            self._registry.fail(pending, TaskTimeout(pending.task_id or "?", deadline))

    def _start_poll(self, pending: Pending) -> None:
        task = asyncio.create_task(self._poll(pending))
        self._polls.add(task)
        task.add_done_callback(self._poll_done)

    def _poll_done(self, task: asyncio.Task[None]) -> None:
        self._polls.discard(task)
        self._wake.set()

    async def _poll(self, pending: Pending) -> None:
        assert pending.task_id is not None
        loop = asyncio.get_running_loop()
        try:
            record = await self._transport.get_record(pending.task_id)
        except (NotFound, RequestRejected) as e:
            age = loop.time() - pending.created
            if age >= self._settings.visibility_grace:
                self._registry.fail(pending, e)
                return
        except (ServerError, RateLimited) as e:
            log.info("poll of %s failed (%s); will try again", pending.task_id, e)
        except ApiError as e:
            self._registry.fail(pending, e)
            return
        else:
            if record.is_final:
                self._registry.finish(pending, record)
                return
            if record.raw_state != record.state.value:
                log.warning("task %s has unknown state %r", pending.task_id, record.raw_state)
        if not pending.done:
            now = loop.time()
            self._push(pending, now + self._interval(pending, now))
