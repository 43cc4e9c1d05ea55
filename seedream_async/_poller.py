"""
One scheduler polling every watched task of a client: a heap of due times, one task.

Without callbacks it follows the vendor's schedule (frequent at first, backing off, with
jitter); with callbacks it is the safety net for lost ones, polling late and rarely. It also
enforces each task's deadline, so there is no timer or sleeping coroutine per task. What an
answer means is the lifecycle's call (``Lifecycle.poll_answer``); this module only decides
*when* to ask. Any exception of one poll goes to the lifecycle too, and if the scheduler
itself dies, every task it served fails with a typed error instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random

from ._account import Condition
from ._config import Settings
from ._coordination import Coordinator, LocalCoordinator
from ._errors import ClientClosed, ServerError
from ._lifecycle import Lifecycle, Task
from ._models import TaskRecord
from ._transport import Transport

log = logging.getLogger("seedream_async")

#: Compact the heap once this many of its entries belong to tasks already resolved.
_COMPACT_AFTER = 1024
#: A callback may prompt a poll of its task at most this often (forgeries are coalesced).
RECHECK_GAP = 1.0


class Poller:
    """Polls watched tasks by due time and expires them at their deadline."""

    def __init__(
        self,
        transport: Transport,
        lifecycle: Lifecycle,
        settings: Settings,
        *,
        safety_net: bool,
        coordinator: Coordinator | None = None,
    ) -> None:
        self._transport = transport
        #: In a fleet, one process polls a task for all (a claim per poll).
        self._coordinator = coordinator or LocalCoordinator()
        self._lifecycle = lifecycle
        self._settings = settings
        #: With callbacks, polls only catch lost ones.
        self.safety_net = safety_net
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._stale = 0
        #: First safety polls, in due order (each is "accepted + safety_poll_after"): a dict
        #: rather than heap entries, so a task that ends (nearly all, by callback) leaves at
        #: once, by reference counting, instead of lingering until compaction and being freed
        #: in bursts, which is what made the cyclic GC run often.
        self._first: dict[Task, float] = {}
        self._first_last = -math.inf
        self._wake = asyncio.Event()
        #: When the runner wakes by itself (inf: not before it is woken): an entry due later
        #: needs no wake-up call.
        self._sleep_until = math.inf
        self._runner: asyncio.Task[None] | None = None
        self._polls: dict[asyncio.Task[None], Task] = {}
        self._last_poll: dict[Task, float] = {}
        self._max_polls = max(4, 2 * settings.query_rate)
        self._closed = False
        lifecycle.watcher = self

    def watch(self, task: Task, *, poll_now: bool = False) -> None:
        """Start polling ``task`` (and enforcing its deadline)."""
        if self._closed or task.done:
            return
        now = asyncio.get_running_loop().time()
        if task.task_id is None:
            due = self._deadline(task)  # nothing to poll: only the deadline matters
        elif poll_now:
            due = now
        elif self.safety_net:
            due = now + self._settings.safety_poll_after
            if self._first_last <= due <= self._deadline(task):
                self._schedule_first(task, due)
                return
        else:
            due = now + self._interval(task, now)
        self._push(task, due)

    def poll_soon(self, task: Task) -> None:
        """A callback claims ``task`` ended: poll it soon, at most once per ``RECHECK_GAP``."""
        if self._closed or task.done or task.task_id is None or task in self._polls.values():
            return  # a poll in progress will look again when it ends (``recheck``)
        now = asyncio.get_running_loop().time()
        due = max(now, self._last_poll.get(task, -math.inf) + RECHECK_GAP)
        if due < task.due:
            self._push(task, due)

    def callbacks_stopped(self) -> None:
        """No callback can arrive any more: poll on the vendor's schedule from now on."""
        self.safety_net = False

    def forget(self, task: Task) -> None:
        """A watched task ended; compact the heap when it is mostly stale."""
        self._last_poll.pop(task, None)
        if self._first.pop(task, None) is not None:
            return  # it never had a heap entry
        self._stale += 1
        if self._stale > _COMPACT_AFTER and self._stale * 2 > len(self._heap):
            self._heap = [e for e in self._heap if not e[2].done and e[0] == e[2].due]
            heapq.heapify(self._heap)
            self._stale = 0

    async def aclose(self) -> None:
        """Stop polling for good; leaves no task running."""
        self._closed = True
        tasks = [*self._polls, *([self._runner] if self._runner else [])]
        self._runner = None
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._heap.clear()
        self._first.clear()
        self._last_poll.clear()

    def _push(self, task: Task, due: float) -> None:
        due = min(due, self._deadline(task))
        self._first.pop(task, None)  # a task has one current entry: this one
        task.due = due
        heapq.heappush(self._heap, (due, next(self._seq), task))
        if due < self._sleep_until:
            self._wake.set()
        self._ensure_runner()

    def _schedule_first(self, task: Task, due: float) -> None:
        """Queue ``task``'s first safety poll; ``due`` is never before the last one queued."""
        task.due = self._first_last = due
        self._first[task] = due
        if due < self._sleep_until:
            self._wake.set()
        self._ensure_runner()

    def _ensure_runner(self) -> None:
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="seedream-poller")
            self._runner.add_done_callback(self._runner_done)

    def _head(self) -> float | None:
        """When the next entry is due, if any."""
        first = next(iter(self._first.values()), None)
        heap = self._heap[0][0] if self._heap else None
        if first is None or (heap is not None and heap < first):
            return heap
        return first

    def _pop_due(self, now: float) -> Task | None:
        """The earliest current entry due by ``now``, removed; None if nothing is due."""
        first, heap = self._first, self._heap
        while True:
            head = next(iter(first.items()), None)
            if heap and heap[0][0] <= now and (head is None or heap[0][0] < head[1]):
                due, _, task = heapq.heappop(heap)
                if not task.done and due == task.due:
                    return task
            elif head is not None and head[1] <= now:
                task = head[0]
                del first[task]  # always current: a rescheduled task left it already
                if not task.done:
                    return task
            else:
                return None

    def _deadline(self, task: Task) -> float:
        """Loop time ``task`` expires: inf until its clocks start."""
        return task.started + self._settings.task_deadline

    def _interval(self, task: Task, now: float) -> float:
        if self.safety_net:
            return self._settings.safety_poll_every
        schedule = self._settings.poll_schedule
        base = schedule.interval(now - task.started)
        return base * (1 + random.uniform(-schedule.jitter, schedule.jitter))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            while len(self._polls) < self._max_polls and (task := self._pop_due(now)) is not None:
                if now >= self._deadline(task):
                    self._lifecycle.expire(task)
                elif task.task_id is not None:
                    self._start_poll(task)
            timeout = None
            self._sleep_until = math.inf
            if len(self._polls) < self._max_polls and (head := self._head()) is not None:
                timeout = max(0.0, head - now)
                self._sleep_until = now + timeout
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()

    def _runner_done(self, runner: asyncio.Task[None]) -> None:
        """The scheduler never ends by itself: if it did, its tasks must not hang."""
        if self._runner is runner:
            self._runner = None
        if runner.cancelled() or (error := runner.exception()) is None:
            return
        log.error("the polling scheduler failed; ending the tasks it served", exc_info=error)
        failure = ServerError(f"polling stopped: {type(error).__name__}: {error}", code=None)
        failure.__cause__ = error
        self._lifecycle.fail_all(failure)

    def _start_poll(self, task: Task) -> None:
        task.due = math.inf  # in progress: no heap entry is current
        task.recheck = False
        poll = asyncio.create_task(self._poll(task))
        self._polls[poll] = task
        poll.add_done_callback(self._poll_done)

    def _poll_done(self, poll: asyncio.Task[None]) -> None:
        self._polls.pop(poll, None)
        self._wake.set()

    async def _poll(self, task: Task) -> None:
        assert task.task_id is not None
        loop = asyncio.get_running_loop()
        record: TaskRecord | None = None
        error: BaseException | None = None
        interval = self._interval(task, loop.time())
        if self._coordinator.shared and not await self._coordinator.claim_poll(
            task.task_id, interval
        ):
            # Another process polls it now; its answer reaches us through the fleet.
            self._push(task, loop.time() + interval)
            return
        if (hold := self._transport.account.hold) is not None and hold.condition is (
            Condition.KEY_REJECTED
        ):
            # The key is refused: asking again with it only repeats the 401.
            self._lifecycle.poll_answer(task, None, hold.error("recordInfo", "not polled"))
            return
        try:
            record = await self._transport.get_record(task.task_id)
        except ClientClosed:
            return  # the client is closing; it ends every task itself
        except Exception as e:
            error = e
        now = loop.time()
        self._last_poll[task] = now
        if not self._lifecycle.poll_answer(task, record, error) or self._closed:
            return
        if task.recheck:  # a callback came while this poll was out: look again, soon
            self._push(task, now + RECHECK_GAP)
        else:
            self._push(task, now + self._interval(task, now))
