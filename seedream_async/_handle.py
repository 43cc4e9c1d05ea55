"""``TaskHandle``: what ``submit``, ``resume`` and ``reconcile`` give back."""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from types import TracebackType
from typing import Any, Protocol

from ._lifecycle import Task
from ._models import EditResult, TaskRecord, TaskRequest
from ._tracker import outcome


class _Client(Protocol):
    async def get_task(self, task_id: str) -> TaskRecord: ...


class TaskHandle:
    """A task the service accepted; await ``result()`` for its outcome."""

    __slots__ = ("_client", "_task")

    def __init__(self, client: _Client, task: Task) -> None:
        self._client = client
        self._task = task

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id} done={self.done()}>"

    @property
    def task_id(self) -> str:
        """The service's id for this task."""
        assert self._task.task_id is not None
        return self._task.task_id

    @property
    def request(self) -> TaskRequest | None:
        """The request, when this process submitted it (or passed it to ``resume``)."""
        return self._task.request

    @property
    def token(self) -> str | None:
        """The callback token this task was submitted with, if any."""
        return self._task.token

    def done(self) -> bool:
        """True once the task's outcome is known (whichever way)."""
        return self._task.done

    def result(self) -> Coroutine[Any, Any, EditResult]:
        """Wait for the task to end; cancelling this wait never stops tracking the task.

        A coroutine as ``asyncio`` takes one (``await`` it, or give it to ``create_task``,
        ``gather``, ``wait_for``, a ``TaskGroup``), without a frame of its own: a parked edit
        keeps ~48 bytes for it instead of a native coroutine's ~216 (benchmarks/NOTES.md).
        """
        return _Result(self._task)

    async def record(self) -> TaskRecord:
        """Ask the service for the task's current record."""
        return await self._client.get_task(self.task_id)


_SPENT: Any = object()  # the wait is over (or was closed): awaiting again is an error


class _Result(Coroutine[Any, Any, EditResult]):
    """``TaskHandle.result()``: the task's outcome, awaited through this caller's own future.

    The shape of aiohttp's request context manager: a ``collections.abc.Coroutine`` whose
    ``send`` and ``throw`` drive the awaited future's iterator, so ``asyncio`` takes it
    wherever it takes a coroutine. The future is asked for on the first step, so a result
    never awaited registers nothing with the task.
    """

    __slots__ = ("_task", "_wait")

    def __init__(self, task: Task) -> None:
        self._task = task
        self._wait: Generator[Any, None, Any] | None = None

    def __repr__(self) -> str:
        return f"<TaskHandle.result of {self._task!r}>"

    def __await__(self) -> Generator[Any, None, EditResult]:
        return self

    def __iter__(self) -> Generator[Any, None, EditResult]:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any, /) -> Any:
        wait = self._wait
        if wait is None:
            wait = self._wait = self._task.wait().__await__()
        elif wait is _SPENT:
            raise RuntimeError("cannot reuse already awaited coroutine")
        try:
            return wait.send(value)
        except StopIteration as done:
            self._wait = _SPENT
            raise StopIteration(outcome(done.value, self._task.request)) from None
        except BaseException:
            self._wait = _SPENT
            raise

    def throw(
        self,
        typ: Any,
        val: Any = None,
        tb: TracebackType | None = None,
        /,
    ) -> Any:
        wait = self._wait
        if wait is None or wait is _SPENT:
            self._wait = _SPENT
            raise typ if val is None else val  # not waiting: nothing to unwind
        try:
            if val is None and tb is None:
                # asyncio's form; the three-argument one warns from Python 3.12 on.
                return wait.throw(typ)
            return wait.throw(typ, val, tb)
        except BaseException:
            self._wait = _SPENT
            raise

    def close(self) -> None:
        wait, self._wait = self._wait, _SPENT
        if wait is not None and wait is not _SPENT:
            wait.close()
