"""
A task's life, in one place: its phases, what each event does in each phase, and its clocks.

Collaborators only report events; this module alone decides what they mean::

    QUEUED ──send──▶ SENDING ──accepted──▶ ACCEPTED ──final record──▶ RESOLVED
      │                │ │ │                  │ │
      │ refused        │ │ └─final record─────┼─┼──────────────────▶ RESOLVED  (early callback)
      ▼                │ └──answer lost──▶ ANSWER_LOST ──final──────▶ RESOLVED
    DROPPED ◀──refused─┘                    │    (a callback can still tell)
                                            ├──deadline──▶ EXPIRED  (SubmissionUnknown)
                              ACCEPTED ─────┴──deadline──▶ EXPIRED  (TaskTimeout)
                              ACCEPTED ──fatal answer──▶ FAILED
    every live phase ──close──▶ FAILED (ClientClosed)

- QUEUED: registered (its callback token is live), waiting for a slot or the rate limiter;
  nothing was sent, so nothing is paid. SENDING: createTask may be on the wire.
- **Clocks start when the service has the task**: on ACCEPTED (the answer came) or on
  ANSWER_LOST (from when it was sent). Queueing for a slot or the limiter never counts
  against the visibility grace, the safety polls or the deadline.
- The first final event wins; later ones are acknowledged and ignored. Entering a final
  phase returns the task's ``max_in_flight`` slot and forgets its token and id (the last
  ``FINISHED_TOKENS_KEPT`` tokens are remembered so duplicate callbacks get a 200).

Collaborators: the submitter (``_tracker``) reports send/accepted/refused/lost; the
receiver offers callbacks; the poller (a ``Watcher``) reports poll answers and deadlines.
Each step is reported to the client's ``Telemetry`` (hooks, INFO logs) when anyone listens.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from ._config import Settings
from ._errors import (
    ApiError,
    ClientClosed,
    NotFound,
    RateLimited,
    RequestRejected,
    SeedreamError,
    ServerError,
    ServiceUnavailable,
    SubmissionUnknown,
    TaskFailed,
    TaskTimeout,
)
from ._limits import Slots
from ._models import TaskRecord, TaskRequest, TaskState
from ._telemetry import (
    EditAccepted,
    EditAnswerLost,
    EditEnded,
    EditQueued,
    EditSent,
    Outcome,
    Telemetry,
    Via,
)

log = logging.getLogger("seedream_async")

#: How many finished tokens are remembered so that duplicate callbacks are acknowledged.
FINISHED_TOKENS_KEPT = 10_000


class Phase(enum.Enum):
    """Where a task is in its life."""

    #: Members are singletons compared by identity: hash them in C, not through
    #: ``Enum.__hash__`` (a Python call for every transition and ``done`` check).
    __hash__ = object.__hash__

    QUEUED = "queued"
    SENDING = "sending"
    ACCEPTED = "accepted"
    ANSWER_LOST = "answer lost"
    RESOLVED = "resolved"
    FAILED = "failed"
    EXPIRED = "expired"
    DROPPED = "dropped"

    @property
    def is_final(self) -> bool:
        """True once the task's outcome is decided."""
        return self in _FINAL


_FINAL = frozenset((Phase.RESOLVED, Phase.FAILED, Phase.EXPIRED, Phase.DROPPED))
_OUTCOMES: dict[Phase, Outcome] = {
    Phase.RESOLVED: "resolved",
    Phase.FAILED: "failed",
    Phase.EXPIRED: "expired",
    Phase.DROPPED: "dropped",
}


class Event(enum.Enum):
    """What collaborators report."""

    __hash__ = object.__hash__  # as Phase's

    SEND = "send"
    ACCEPTED = "accepted"
    REFUSED = "refused"
    ANSWER_LOST = "answer lost"
    FINAL_RECORD = "final record"
    FATAL_ANSWER = "fatal answer"
    DEADLINE = "deadline"
    #: A collaborator died (the poller, a resume's lookup): every live task fails, none hangs.
    BROKEN = "broken"
    CLOSE = "close"


#: Every allowed transition; an event not listed for a phase is ignored (a late duplicate).
TRANSITIONS: dict[Phase, dict[Event, Phase]] = {
    Phase.QUEUED: {
        Event.SEND: Phase.SENDING,
        Event.REFUSED: Phase.DROPPED,
        Event.BROKEN: Phase.FAILED,
        Event.CLOSE: Phase.FAILED,
    },
    Phase.SENDING: {
        Event.ACCEPTED: Phase.ACCEPTED,
        Event.REFUSED: Phase.DROPPED,
        Event.ANSWER_LOST: Phase.ANSWER_LOST,
        Event.FINAL_RECORD: Phase.RESOLVED,
        Event.BROKEN: Phase.FAILED,
        Event.CLOSE: Phase.FAILED,
    },
    Phase.ACCEPTED: {
        Event.FINAL_RECORD: Phase.RESOLVED,
        Event.FATAL_ANSWER: Phase.FAILED,
        Event.DEADLINE: Phase.EXPIRED,
        Event.BROKEN: Phase.FAILED,
        Event.CLOSE: Phase.FAILED,
    },
    Phase.ANSWER_LOST: {
        Event.FINAL_RECORD: Phase.RESOLVED,
        Event.FATAL_ANSWER: Phase.FAILED,
        Event.DEADLINE: Phase.EXPIRED,
        Event.BROKEN: Phase.FAILED,
        Event.CLOSE: Phase.FAILED,
    },
    Phase.RESOLVED: {},
    Phase.FAILED: {},
    Phase.EXPIRED: {},
    Phase.DROPPED: {},
}


class Offer(enum.Enum):
    """What became of a callback offered to the lifecycle."""

    __hash__ = object.__hash__  # as Phase's

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    UNKNOWN_TOKEN = "unknown token"  # noqa: S105 (a label, not a secret)
    WRONG_TASK = "task id does not match the token"


_Waiter = asyncio.Future[TaskRecord]

#: The outcome of a task that never existed (never sent, or refused): its waiters are cancelled.
DROPPED = asyncio.CancelledError("the task was never sent, or the service refused it")


class Task:
    """One task being tracked; ``outcome`` is its final ``TaskRecord`` (or error) once known."""

    __slots__ = (
        "due",
        "fleet_key",
        "holds_slot",
        "outcome",
        "phase",
        "recheck",
        "request",
        "sent_at",
        "started",
        "task_id",
        "token",
        "unknown",
        "waiters",
    )

    def __init__(
        self,
        *,
        token: str | None,
        task_id: str | None,
        request: TaskRequest | None,
        holds_slot: bool,
    ) -> None:
        #: None until the task ends: then its final record, its error, or ``DROPPED``.
        self.outcome: TaskRecord | BaseException | None = None
        self.phase = Phase.QUEUED
        self.token = token
        self.task_id = task_id
        self.request = request
        #: It counts against ``max_in_flight`` until final.
        self.holds_slot = holds_slot
        #: Loop time the clocks started (the service had the task); inf until then. The
        #: deadline is ``settings.task_deadline`` after it (not kept: a float per parked edit).
        self.started = float("inf")
        #: Loop time createTask went out.
        self.sent_at = float("inf")
        #: When the poller looks next; heap entries with another ``due`` are stale.
        self.due = float("inf")
        #: A callback claimed an outcome that must be confirmed by a poll.
        self.recheck = False
        #: The error to raise at the deadline when createTask's answer was lost.
        self.unknown: SubmissionUnknown | None = None
        #: Its account-wide in-flight slot, when a fleet caps those.
        self.fleet_key: str | None = None
        #: Futures of the coroutines awaiting ``wait()`` (None until the first one).
        self.waiters: _Waiter | list[_Waiter] | None = None

    def __repr__(self) -> str:
        return f"<Task {self.task_id or '(no id yet)'} {self.phase.value}>"

    @property
    def done(self) -> bool:
        """True once the outcome is decided, whichever way."""
        return self.phase in _FINAL

    def wait(self) -> _Waiter:
        """
        A future of the final record (or the task's error), this caller's own: cancelling the
        caller cancels it and never touches the task.

        What ``asyncio.shield`` of a shared future would do, with one future per waiter and
        no coroutine of its own; the usual single waiter is kept without a list (the GC scans
        every object alive per edit parked in flight).
        """
        waiter: _Waiter = asyncio.get_running_loop().create_future()
        waiters = self.waiters
        if self.outcome is not None:
            self._settle(waiter)
        elif waiters is None:
            self.waiters = waiter
        elif isinstance(waiters, list):
            if len(waiters) >= 16:  # callers that gave up (timeouts) leave cancelled futures
                waiters[:] = [w for w in waiters if not w.done()]
            waiters.append(waiter)
        else:
            self.waiters = [waiters, waiter]
        return waiter

    def wake(self) -> None:
        """Hand the outcome to every waiter still waiting."""
        waiters, self.waiters = self.waiters, None
        if isinstance(waiters, list):
            for waiter in waiters:
                if not waiter.done():
                    self._settle(waiter)
        elif waiters is not None and not waiters.done():
            self._settle(waiters)  # the usual single waiter (no tuple to loop over)

    def _settle(self, waiter: asyncio.Future[TaskRecord]) -> None:
        outcome = self.outcome
        if outcome is DROPPED:
            waiter.cancel()
        elif isinstance(outcome, BaseException):
            waiter.set_exception(outcome)
        else:
            assert outcome is not None
            waiter.set_result(outcome)


class Watcher(Protocol):
    """The poller, as the lifecycle sees it."""

    def watch(self, task: Task, *, poll_now: bool = False) -> None: ...

    def poll_soon(self, task: Task) -> None: ...

    def forget(self, task: Task) -> None: ...

    def callbacks_stopped(self) -> None: ...


class _NoWatcher:
    """Stands in until the poller exists (and in pure tests of the state machine)."""

    def watch(self, task: Task, *, poll_now: bool = False) -> None:
        pass

    def poll_soon(self, task: Task) -> None:
        pass

    def forget(self, task: Task) -> None:
        pass

    def callbacks_stopped(self) -> None:
        pass


class Lifecycle:
    """Every tracked task of one client, by callback token and by task id."""

    def __init__(
        self,
        settings: Settings,
        slots: Slots,
        *,
        callbacks: bool,
        confirm_callbacks: bool = False,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.slots = slots
        #: A callback can reach us, so a lost createTask answer may still be told.
        self.callbacks = callbacks
        #: Callbacks only prompt a poll; their claims are never trusted on their own.
        self.confirm_callbacks = confirm_callbacks
        self.watcher: Watcher = _NoWatcher()
        #: Told of every final record (a fleet keeps it for the other processes).
        self.on_final: Callable[[Task, TaskRecord, Via | None], None] | None = None
        #: Told when a task gives its in-flight slot back (a fleet frees its account slot).
        self.on_slot_freed: Callable[[Task], None] | None = None
        self.in_flight = 0
        self.closed = False
        self._by_token: dict[str, Task] = {}
        self._by_task: dict[str, Task] = {}
        self._finished: OrderedDict[str, str] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- registration ---------------------------------------------------------------------

    def queue(self, request: TaskRequest, token: str | None, *, holds_slot: bool) -> Task:
        """Register a submission before anything is sent (so an early callback finds it)."""
        self._refuse_if_closed()
        task = self._new(request, token=token, task_id=None, holds_slot=holds_slot)
        if holds_slot:
            self.in_flight += 1
        if self.telemetry.active:
            self.telemetry.emit(EditQueued(edit=id(task), request=request))
        return task

    def attach(
        self, task_id: str, request: TaskRequest | None, token: str | None, *, poll_now: bool = True
    ) -> Task:
        """Track a task accepted earlier (``resume``): its clocks start now."""
        self._refuse_if_closed()
        if (known := self._by_task.get(task_id)) is not None:
            return known
        task = self._new(request, token=token, task_id=task_id, holds_slot=False)
        task.phase = Phase.ACCEPTED
        self._start_clocks(task, self._now())
        if self.telemetry.active:
            self.telemetry.emit(EditAccepted(edit=id(task), task_id=task_id))
        self.watcher.watch(task, poll_now=poll_now)
        return task

    def attach_unknown(self, token: str, request: TaskRequest, error: SubmissionUnknown) -> Task:
        """Track a submission sent by an earlier run whose answer never came (``reconcile``)."""
        self._refuse_if_closed()
        if (known := self._by_token.get(token)) is not None:
            return known
        task = self._new(request, token=token, task_id=None, holds_slot=False)
        task.phase = Phase.SENDING
        task.sent_at = self._now()
        self.answer_lost(task, error)
        return task

    def _new(
        self,
        request: TaskRequest | None,
        *,
        token: str | None,
        task_id: str | None,
        holds_slot: bool,
    ) -> Task:
        task = Task(token=token, task_id=task_id, request=request, holds_slot=holds_slot)
        if token is not None:
            self._by_token[token] = task
        if task_id is not None:
            self._by_task[task_id] = task
        return task

    def get_task(self, task_id: str) -> Task | None:
        """Return the live task with this id, if tracked."""
        return self._by_task.get(task_id)

    def has_token(self, token: str) -> bool:
        """True while a task with this callback token is live."""
        return token in self._by_token

    def live(self) -> list[Task]:
        """Return every task not yet final."""
        seen = {id(t): t for t in self._by_token.values()}
        seen.update((id(t), t) for t in self._by_task.values())
        return [t for t in seen.values() if not t.done]

    # --- what the submitter reports ---------------------------------------------------------

    def send(self, task: Task) -> None:
        """createTask is about to go out; refused (``ClientClosed``) once the client closed."""
        self._refuse_if_closed()
        if self._move(task, Event.SEND) is None:
            if isinstance(task.outcome, BaseException):
                # Ended before it went out (``fail_all``): sending now would pay for a task
                # whose caller was already told it failed.
                raise task.outcome
            return  # SENDING already: the same createTask again, after a 429
        task.sent_at = self._now()
        if self.telemetry.active:
            self.telemetry.emit(EditSent(edit=id(task)))

    def accepted(self, task: Task, task_id: str) -> None:
        """The service answered createTask with ``task_id``: start the clocks and watch it."""
        if task.task_id is not None and task.task_id != task_id:
            log.warning(
                "createTask answered %s for a submission bound to %s", task_id, task.task_id
            )
            return
        self._bind(task, task_id)
        if self._move(task, Event.ACCEPTED) is None:
            return  # already resolved by an early callback
        now = self._now()
        self._start_clocks(task, now)
        if self.telemetry.active:
            took = now - task.sent_at
            self.telemetry.emit(EditAccepted(edit=id(task), task_id=task_id, create_seconds=took))
        self.watcher.watch(task, poll_now=task.recheck)

    def refused(self, task: Task) -> None:
        """createTask was never sent, or the service refused it: no task exists."""
        if self._move(task, Event.REFUSED) is not None:
            task.outcome = DROPPED
            task.wake()
            self._finished_with(task)
            if self.telemetry.active:
                self.telemetry.emit(EditEnded(edit=id(task), outcome="dropped"))

    def answer_lost(self, task: Task, error: SubmissionUnknown) -> None:
        """createTask went out and its answer was lost: wait for a callback to tell."""
        if task.task_id is not None:  # a callback already named the task: just poll it
            self.accepted(task, task.task_id)
            return
        if not self.callbacks:  # nothing can ever tell: the caller must decide
            self._move(task, Event.ANSWER_LOST)
            self._end(task, Event.DEADLINE, error=error)
            return
        if self._move(task, Event.ANSWER_LOST) is None:
            return
        if self.telemetry.active:
            self.telemetry.emit(EditAnswerLost(edit=id(task)))
        task.unknown = error
        self._start_clocks(task, task.sent_at)
        self.watcher.watch(task)

    # --- what the receiver reports ------------------------------------------------------------

    def bound_task_id(self, token: str) -> str | None:
        """The task id a live token is bound to, if known (to check a signature early)."""
        task = self._by_token.get(token)
        if task is not None:
            return task.task_id
        return self._finished.get(token) or None

    def offer(self, token: str, record: TaskRecord, *, via: Via = "callback") -> Offer:
        """Judge a callback for ``token`` (``via``: who delivered it, for telemetry)."""
        task = self._by_token.get(token)
        if task is None:
            finished = self._finished.get(token)
            if finished is None:
                return Offer.UNKNOWN_TOKEN
            if finished == "":  # it ended before its id was known: this proves it exists
                log.warning(
                    "a late callback shows task %s exists (state %s), after it ended here",
                    record.task_id,
                    record.state.value,
                )
                return Offer.DUPLICATE
            return Offer.DUPLICATE if finished == record.task_id else Offer.WRONG_TASK
        if task.task_id is not None and task.task_id != record.task_id:
            return Offer.WRONG_TASK
        if not record.is_final:
            return Offer.DUPLICATE
        if task.phase is Phase.QUEUED:
            return Offer.UNKNOWN_TOKEN  # nothing went out under this token yet: a guess
        if task.task_id is None:  # the callback beat the createTask answer
            self._bind(task, record.task_id)
        if self.confirm_callbacks:
            # Only a poll decides; while SENDING, ``accepted`` polls at once.
            task.recheck = True
            if task.phase is not Phase.SENDING:
                self.watcher.poll_soon(task)
            return Offer.ACCEPTED
        self._end(task, Event.FINAL_RECORD, record=record, via=via)
        return Offer.ACCEPTED

    # --- what the poller reports ----------------------------------------------------------------

    def poll_answer(
        self,
        task: Task,
        record: TaskRecord | None,
        error: BaseException | None,
        *,
        via: Via = "poll",
    ) -> bool:
        """Judge one poll's answer; return True while the task should be polled again."""
        if task.done:
            return False
        if error is None:
            assert record is not None
            if record.task_id != task.task_id:
                log.warning(
                    "recordInfo for %s answered task %s; ignored", task.task_id, record.task_id
                )
                return True
            if record.is_final:
                self._end(task, Event.FINAL_RECORD, record=record, via=via)
                return False
            if record.raw_state != record.state.value:
                log.warning("task %s has unknown state %r", task.task_id, record.raw_state)
            return True
        if isinstance(error, NotFound | RequestRejected):
            if self._now() - task.started < self.settings.visibility_grace:
                return True  # not visible yet, right after create
        elif isinstance(error, ServerError | RateLimited | ServiceUnavailable):
            # (maintenance or an outage: the task goes on at the service; ask again later)
            log.info("poll of %s failed (%s); will try again", task.task_id, error)
            return True
        elif not isinstance(error, ApiError):
            error = _internal(error, task)
        self._end(task, Event.FATAL_ANSWER, error=error, via=via)
        return False

    def expire(self, task: Task) -> None:
        """The task's deadline passed."""
        if task.unknown is not None:
            self._end(task, Event.DEADLINE, error=task.unknown)
        else:
            self._end(
                task,
                Event.DEADLINE,
                error=TaskTimeout(task.task_id or "?", self.settings.task_deadline),
            )

    def fail_all(self, error: BaseException) -> None:
        """A collaborator died: end every live task with ``error`` rather than let it hang."""
        for task in self.live():
            self._end(task, Event.BROKEN, error=error)

    def callbacks_stopped(self, *, others_may_tell: bool = False) -> None:
        """
        The receiver stopped listening: poll every accepted task now, and from now on as in
        polling mode. A task whose createTask answer was lost has no id to poll: it ends
        with its ``SubmissionUnknown`` at once, unless ``others_may_tell`` (a fleet, where
        another replica may still receive its callback): then it waits to its deadline.
        """
        if not self.callbacks:
            return
        self.callbacks = False
        self.confirm_callbacks = False
        self.watcher.callbacks_stopped()
        for task in self.live():
            if task.phase is Phase.ACCEPTED and task.task_id is not None:
                self.watcher.poll_soon(task)
            elif task.phase is Phase.ANSWER_LOST and task.unknown and not others_may_tell:
                self._end(task, Event.DEADLINE, error=task.unknown)

    def close(self) -> None:
        """The client closes: every live task fails with ``ClientClosed``; nothing new starts."""
        self.closed = True
        for task in self.live():
            name = task.task_id or "a submission"
            self._end(
                task, Event.CLOSE, error=ClientClosed(f"client closed while {name} was pending")
            )

    # --- internals ----------------------------------------------------------------------------

    def _move(self, task: Task, event: Event) -> Phase | None:
        """Apply ``event`` to ``task``; None when the phase does not take it (a late event)."""
        phase = TRANSITIONS[task.phase].get(event)
        if phase is not None:
            task.phase = phase
        return phase

    def _end(
        self,
        task: Task,
        event: Event,
        *,
        record: TaskRecord | None = None,
        error: BaseException | None = None,
        via: Via | None = None,
    ) -> None:
        if self._move(task, event) is None:
            return
        assert record is not None or error is not None
        task.outcome = record if record is not None else error
        task.wake()
        if self.telemetry.active:  # after the wake-ups: it runs right after the waiters
            self._report_end(task, record, error, via)
        if record is not None and self.on_final is not None:
            self.on_final(task, record, via)
        self._finished_with(task)

    def _report_end(
        self,
        task: Task,
        record: TaskRecord | None,
        error: BaseException | None,
        via: Via | None,
    ) -> None:
        """Report the outcome once the awaiting code had its turn (the wake latency)."""
        loop = asyncio.get_running_loop()
        ended = loop.time()
        outcome: Outcome = _OUTCOMES[task.phase]
        if record is not None and record.state is not TaskState.SUCCESS:
            outcome = "failed"  # the service ran it and it failed: the caller gets TaskFailed
            error = TaskFailed(record.task_id, record.fail_code, record.fail_msg)
        task_id, telemetry = task.task_id, self.telemetry

        def report(_: object) -> None:
            telemetry.emit(
                EditEnded(
                    # ``id`` of a live task: this closure keeps it alive until it is reported,
                    # so the next edit (started as its caller woke) cannot be given the same.
                    edit=id(task),
                    task_id=task_id,
                    outcome=outcome,
                    via=via,
                    record=record,
                    error=error,
                    wake_seconds=loop.time() - ended,
                )
            )

        # The waiters are woken (their resumptions queued): this runs right after them.
        loop.call_soon(report, None)

    def _finished_with(self, task: Task) -> None:
        if task.holds_slot:
            task.holds_slot = False
            self.in_flight -= 1
            self.slots.release()
            if self.on_slot_freed is not None:
                self.on_slot_freed(task)
        if task.token is not None:
            if self._by_token.get(task.token) is task:
                del self._by_token[task.token]
            # Sent and not refused: the service may still call it back.
            if task.sent_at != float("inf") and task.phase is not Phase.DROPPED:
                self._finished[task.token] = task.task_id or ""
                if len(self._finished) > FINISHED_TOKENS_KEPT:
                    self._finished.popitem(last=False)
        if task.task_id is not None and self._by_task.get(task.task_id) is task:
            del self._by_task[task.task_id]
        self.watcher.forget(task)

    def _bind(self, task: Task, task_id: str) -> None:
        task.task_id = task_id
        if not task.done:
            self._by_task.setdefault(task_id, task)
        elif task.token is not None and self._finished.get(task.token) == "":
            self._finished[task.token] = task_id  # a late answer names what ended here

    def _start_clocks(self, task: Task, origin: float) -> None:
        task.started = origin

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise ClientClosed("this client is closed; make a new one")

    def _now(self) -> float:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()


def _internal(error: BaseException, task: Task) -> SeedreamError:
    wrapped = ServerError(
        f"unexpected {type(error).__name__} while polling: {error}",
        code=None,
        endpoint="recordInfo",
    )
    wrapped.__cause__ = error
    log.error("polling %s failed unexpectedly", task.task_id, exc_info=error)
    return wrapped
