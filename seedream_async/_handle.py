"""``TaskHandle``: what ``submit``, ``resume`` and ``reconcile`` give back."""

from __future__ import annotations

from typing import Protocol

from ._lifecycle import Task
from ._models import EditRequest, EditResult, TaskRecord
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
    def request(self) -> EditRequest | None:
        """The request, when this process submitted it (or passed it to ``resume``)."""
        return self._task.request

    @property
    def token(self) -> str | None:
        """The callback token this task was submitted with, if any."""
        return self._task.token

    def done(self) -> bool:
        """True once the task's outcome is known (whichever way)."""
        return self._task.done

    async def result(self) -> EditResult:
        """Wait for the task to end; cancelling this wait never stops tracking the task."""
        # Inline, not a helper coroutine: one less live frame per waiting task (GC scans them).
        record = await self._task.wait()
        return outcome(record, self._task.request)

    async def record(self) -> TaskRecord:
        """Ask the service for the task's current record."""
        return await self._client.get_task(self.task_id)
