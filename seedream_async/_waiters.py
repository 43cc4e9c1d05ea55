"""
Who is waiting for which task: callback token and task id to one future per task.

A ``Pending`` is registered under its token *before* createTask is sent, so a callback that
beats the createTask answer finds it. The first final record to arrive (callback or poll)
resolves it; later ones are acknowledged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum

from ._models import EditRequest, TaskRecord

log = logging.getLogger("seedream_async")

#: How many finished tokens are remembered so that duplicate callbacks are acknowledged.
FINISHED_TOKENS_KEPT = 10_000


class Offer(Enum):
    """What became of a callback offered to the registry."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    UNKNOWN_TOKEN = "unknown token"  # noqa: S105 (a label, not a secret)
    WRONG_TASK = "task id does not match the token"


class Pending:
    """One task being awaited: its future resolves to the final ``TaskRecord``."""

    __slots__ = (
        "created",
        "deadline",
        "due",
        "future",
        "holds_slot",
        "request",
        "sent",
        "task_id",
        "token",
        "unknown",
    )

    def __init__(
        self,
        future: asyncio.Future[TaskRecord],
        *,
        token: str | None,
        task_id: str | None,
        request: EditRequest | None,
        created: float,
        deadline: float,
        holds_slot: bool = False,
    ) -> None:
        self.future = future
        #: It counts against the client's ``max_in_flight`` until resolved.
        self.holds_slot = holds_slot
        self.token = token
        self.task_id = task_id
        self.request = request
        self.created = created
        self.deadline = deadline
        #: When the poller looks at it next (loop time); heap entries with another due are stale.
        self.due = deadline
        #: The error to raise at the deadline when createTask's answer was lost.
        self.unknown: BaseException | None = None
        #: True once createTask may have gone out (so the task may exist).
        self.sent = False

    @property
    def done(self) -> bool:
        """True once resolved, whichever way."""
        return self.future.done()


class Registry:
    """Every ``Pending`` of one client, by token and by task id."""

    __slots__ = ("_by_task", "_by_token", "_finished", "on_callback", "on_resolved")

    def __init__(self) -> None:
        self._by_token: dict[str, Pending] = {}
        self._by_task: dict[str, Pending] = {}
        self._finished: OrderedDict[str, str] = OrderedDict()
        #: Called with each accepted callback record; the client may confirm it first.
        self.on_callback: Callable[[Pending, TaskRecord], None] = self.finish
        #: Called synchronously as each pending task is resolved, whichever way.
        self.on_resolved: Callable[[Pending], None] = lambda _: None

    def add(self, pending: Pending) -> None:
        """Track ``pending`` under its token and task id, whichever it has."""
        if pending.token is not None:
            self._by_token[pending.token] = pending
        if pending.task_id is not None:
            self._by_task[pending.task_id] = pending

    def get_task(self, task_id: str) -> Pending | None:
        """Return the pending task with this id, if it is tracked."""
        return self._by_task.get(task_id)

    def get_token(self, token: str) -> Pending | None:
        """Return the pending task with this callback token, if it is tracked."""
        return self._by_token.get(token)

    def all(self) -> list[Pending]:
        """Return every tracked task."""
        seen = {id(p): p for p in self._by_token.values()}
        seen.update((id(p), p) for p in self._by_task.values())
        return list(seen.values())

    def bind(self, pending: Pending, task_id: str) -> None:
        """Record the task id the service gave a submission."""
        if pending.task_id is not None and pending.task_id != task_id:
            log.warning("submission already bound to another task; keeping the first")
            return
        pending.task_id = task_id
        if not pending.done:
            self._by_task[task_id] = pending

    def offer(self, token: str, record: TaskRecord) -> Offer:
        """Judge a callback for ``token``; an accepted one is passed to ``on_callback``."""
        pending = self._by_token.get(token)
        if pending is None:
            finished = self._finished.get(token)
            if finished is None:
                return Offer.UNKNOWN_TOKEN
            return Offer.DUPLICATE if finished == record.task_id else Offer.WRONG_TASK
        if pending.task_id is not None and pending.task_id != record.task_id:
            return Offer.WRONG_TASK
        if not record.is_final:
            return Offer.DUPLICATE
        if pending.task_id is None:  # the callback beat the createTask answer
            self.bind(pending, record.task_id)
        self.on_callback(pending, record)
        return Offer.ACCEPTED

    def finish(self, pending: Pending, record: TaskRecord) -> None:
        """Resolve with a final record, unless something resolved it first."""
        if not pending.future.done():
            pending.future.set_result(record)
            self._resolved(pending)

    def fail(self, pending: Pending, error: BaseException) -> None:
        """Resolve with an error, unless something resolved it first."""
        if not pending.future.done():
            pending.future.set_exception(error)
            # Nobody may be awaiting (a cancelled caller): don't log it as never retrieved.
            pending.future.exception()
            self._resolved(pending)

    def drop(self, pending: Pending) -> None:
        """Stop tracking a submission that never reached the service."""
        if not pending.future.done():
            pending.future.cancel()
            self._resolved(pending)

    def _resolved(self, pending: Pending) -> None:
        self._forget(pending)
        self.on_resolved(pending)

    def _forget(self, pending: Pending) -> None:
        if pending.token is not None:
            self._by_token.pop(pending.token, None)
            if pending.task_id is not None:
                self._finished[pending.token] = pending.task_id
                if len(self._finished) > FINISHED_TOKENS_KEPT:
                    self._finished.popitem(last=False)
        if pending.task_id is not None and self._by_task.get(pending.task_id) is pending:
            del self._by_task[pending.task_id]
