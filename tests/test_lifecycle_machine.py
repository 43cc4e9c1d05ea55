"""
Issue 9 §8: a stateful property test of a task's life.

Random interleavings of createTask outcomes (accepted, lost, refused), callbacks (genuine,
early, duplicate, forged, late), poll answers (invisible, pending, final, another task's,
transient and fatal errors), cancellations, deadlines and close, driven against the pure
``Lifecycle`` on a virtual clock. Each task must end exactly once, with the outcome its
events call for; phases never go back (so nothing is ever sent twice); slots and clocks add up.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from yarl import URL

from seedream_async import (
    AuthenticationError,
    ClientClosed,
    EditRequest,
    NotFound,
    SeedreamError,
    ServerError,
    Settings,
    SubmissionUnknown,
    TaskRecord,
    TaskState,
    TaskTimeout,
)
from seedream_async._lifecycle import DROPPED, Event, Lifecycle, Offer, Phase, Task
from seedream_async._limits import Slots

T = TypeVar("T")
LIMIT = 4
GRACE, DEADLINE = 3.0, 20.0
RANK = {
    Phase.QUEUED: 0,
    Phase.SENDING: 1,
    Phase.ACCEPTED: 2,
    Phase.ANSWER_LOST: 2,
    Phase.RESOLVED: 3,
    Phase.FAILED: 3,
    Phase.EXPIRED: 3,
    Phase.DROPPED: 3,
}
REQUEST = EditRequest(prompt="p", image_urls=["https://a.example/x.png"])


class Watcher:
    """Stands in for the poller: records what the lifecycle asked of it."""

    def __init__(self) -> None:
        self.watched: Counter[int] = Counter()
        self.forgotten: Counter[int] = Counter()
        self.polled_soon: Counter[int] = Counter()
        self.stopped = 0

    def watch(self, task: Task, *, poll_now: bool = False) -> None:
        self.watched[id(task)] += 1

    def poll_soon(self, task: Task) -> None:
        self.polled_soon[id(task)] += 1

    def callbacks_stopped(self) -> None:
        self.stopped += 1

    def forget(self, task: Task) -> None:
        self.forgotten[id(task)] += 1


def final(task_id: str, *, ok: bool = True) -> TaskRecord:
    if ok:
        urls = (URL(f"https://cdn.example/{task_id}.png"),)
        return TaskRecord(task_id=task_id, state=TaskState.SUCCESS, result_urls=urls)
    return TaskRecord(task_id=task_id, state=TaskState.FAIL, fail_code="500", fail_msg="no")


class LifecycleMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.now = 1000.0
        self.loop.time = lambda: self.now  # type: ignore[method-assign]
        self.ids = itertools.count(1)
        self.tasks: list[Task] = []
        #: The service's side: the id it gave each task that reached it.
        self.service_id: dict[int, str] = {}
        self.arrived_at: dict[int, float] = {}
        self.accepted_at: dict[int, float] = {}
        #: Tasks that entered ANSWER_LOST (their deadline raises SubmissionUnknown).
        self.lost: set[int] = set()
        self.last_rank: dict[int, int] = {}
        self.trusted_final: dict[int, TaskRecord] = {}
        #: Tasks queued by this client, so holding one of its in-flight slots until final.
        self.slotted: set[int] = set()

    def teardown(self) -> None:
        self.loop.close()

    def run(self, fn: Callable[[], T]) -> T:
        async def call() -> T:
            return fn()

        return self.loop.run_until_complete(call())

    @initialize(callbacks=st.booleans(), confirm=st.booleans())
    def start(self, callbacks: bool, confirm: bool) -> None:
        self.callbacks, self.confirm = callbacks, callbacks and confirm
        self.slots = Slots(LIMIT)
        config = Settings(task_deadline=DEADLINE, visibility_grace=GRACE)
        self.lc = Lifecycle(config, self.slots, callbacks=callbacks, confirm_callbacks=self.confirm)
        self.watcher = Watcher()
        self.lc.watcher = self.watcher

    # --- helpers --------------------------------------------------------------------------

    def live(self, *phases: Phase) -> list[Task]:
        return [t for t in self.tasks if t.phase in phases]

    def pick(self, data: st.DataObject, *phases: Phase) -> Task | None:
        candidates = self.live(*phases)
        return data.draw(st.sampled_from(candidates)) if candidates else None

    # --- the submitter ----------------------------------------------------------------------

    @precondition(lambda self: self.slots.free > 0)
    @rule()
    def queue(self) -> None:
        if self.lc.closed:
            with pytest.raises(ClientClosed):
                self.run(lambda: self.lc.queue(REQUEST, None, holds_slot=True))
            return
        self.loop.run_until_complete(self.slots.acquire())  # free, so it returns at once
        token = f"token-{next(self.ids):020d}" if self.callbacks else None
        task = self.run(lambda: self.lc.queue(REQUEST, token, holds_slot=True))
        self.tasks.append(task)
        self.slotted.add(id(task))

    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        task = self.pick(data, Phase.QUEUED)
        if task is None:
            return
        if self.lc.closed:
            with pytest.raises(ClientClosed):
                self.run(lambda: self.lc.send(task))
            return
        self.run(lambda: self.lc.send(task))
        assert task.phase is Phase.SENDING
        # The service has it from this moment (the early callback can come now).
        self.service_id[id(task)] = f"task_{next(self.ids)}"
        self.arrived_at[id(task)] = self.now

    @rule(data=st.data())
    def answer_accepted(self, data: st.DataObject) -> None:
        task = self.pick(data, Phase.SENDING, Phase.RESOLVED)
        if task is None or id(task) not in self.service_id or id(task) in self.accepted_at:
            return
        was = task.phase
        self.run(lambda: self.lc.accepted(task, self.service_id[id(task)]))
        self.accepted_at[id(task)] = self.now
        if was is Phase.SENDING:
            assert task.phase is Phase.ACCEPTED
            assert task.started == self.now  # the clocks start when the answer comes

    @rule(data=st.data())
    def answer_lost(self, data: st.DataObject) -> None:
        task = self.pick(data, Phase.SENDING)
        if task is None:
            return
        error = SubmissionUnknown("reset after sending", request=REQUEST)
        self.run(lambda: self.lc.answer_lost(task, error))
        if task.phase is Phase.ANSWER_LOST:
            self.lost.add(id(task))
        elif task.phase is Phase.ACCEPTED:  # an early callback already named it: polled now
            self.accepted_at[id(task)] = self.now
        elif not self.callbacks:  # nothing could ever tell: the caller decides at once
            assert task.phase is Phase.EXPIRED
            self.lost.add(id(task))

    @rule(data=st.data())
    def refused_or_cancelled_before_send(self, data: st.DataObject) -> None:
        task = self.pick(data, Phase.QUEUED)
        if task is not None:
            self.run(lambda: self.lc.refused(task))
            assert task.phase is Phase.DROPPED

    @rule(data=st.data())
    def refused_by_the_service(self, data: st.DataObject) -> None:
        task = self.pick(data, Phase.SENDING)
        if task is not None:
            self.service_id.pop(id(task), None)  # a refusal made no task
            self.run(lambda: self.lc.refused(task))

    # --- the receiver ------------------------------------------------------------------------

    @precondition(lambda self: self.callbacks)
    @rule(data=st.data(), ok=st.booleans())
    def genuine_callback(self, data: st.DataObject, ok: bool) -> None:
        """The service calls back (maybe early, maybe again, maybe late)."""
        sent = [t for t in self.tasks if id(t) in self.service_id and t.token is not None]
        if not sent:
            return
        task = data.draw(st.sampled_from(sent))
        assert task.token is not None
        record = self.trusted_final.setdefault(id(task), final(self.service_id[id(task)], ok=ok))
        before = task.phase
        offer = self.run(lambda: self.lc.offer(task.token or "", record))
        assert offer in (Offer.ACCEPTED, Offer.DUPLICATE)
        if before in (Phase.SENDING, Phase.ACCEPTED, Phase.ANSWER_LOST) and not self.confirm:
            assert task.phase is Phase.RESOLVED
            assert task.outcome == record

    @precondition(lambda self: self.callbacks)
    @rule(data=st.data())
    def forged_callback(self, data: st.DataObject) -> None:
        """Someone who knows a token but names another task, or guesses a token.

        A live token whose task id is not known yet is the service's credential (only it was
        given the URL): a callback on it is the early callback, and forging one needs the
        token to leak (HMAC or ``confirm_with_record_info`` cover that, tested elsewhere).
        """
        with_token = [
            t
            for t in self.tasks
            if t.token is not None and (t.task_id is not None or t.phase is Phase.QUEUED)
        ]
        forged_id = f"forged_{next(self.ids)}"
        if with_token and data.draw(st.booleans()):
            task = data.draw(st.sampled_from(with_token))
            bound = task.task_id is not None or task.phase is Phase.QUEUED
            before = task.phase
            offer = self.run(lambda: self.lc.offer(task.token or "", final(forged_id)))
            if bound:
                assert offer in (Offer.WRONG_TASK, Offer.UNKNOWN_TOKEN)
                assert task.phase is before
        else:
            offer = self.run(lambda: self.lc.offer("guessed-" + "x" * 20, final(forged_id)))
            assert offer is Offer.UNKNOWN_TOKEN

    # --- resuming and reconciling (tasks of an earlier run: no slot of this client) ----------

    @rule(data=st.data())
    def resume(self, data: st.DataObject) -> None:
        """``resume(task_id)``: a task the service has, new here or already tracked."""
        tracked = [t for t in self.tasks if t.task_id is not None and not t.done]
        if tracked and data.draw(st.booleans()):
            known = data.draw(st.sampled_from(tracked))
            assert known.task_id is not None
            phase = known.phase
            assert self.run(lambda: self.lc.attach(known.task_id or "", REQUEST, None)) is known
            assert known.phase is phase  # resuming a live task changes nothing
            return
        task_id = f"task_{next(self.ids)}"
        if self.lc.closed:
            with pytest.raises(ClientClosed):
                self.run(lambda: self.lc.attach(task_id, REQUEST, None))
            return
        task = self.run(lambda: self.lc.attach(task_id, REQUEST, None))
        self.tasks.append(task)
        self.service_id[id(task)] = task_id
        self.arrived_at[id(task)] = self.accepted_at[id(task)] = self.now
        assert task.phase is Phase.ACCEPTED
        assert self.watcher.watched[id(task)] == 1

    @rule(data=st.data(), reached=st.booleans())
    def reconcile(self, data: st.DataObject, reached: bool) -> None:
        """``reconcile(token)``: an earlier run sent it and its answer never came."""
        token = f"token-{next(self.ids):020d}"
        error = SubmissionUnknown("an earlier run's answer was lost", request=REQUEST)
        if self.lc.closed:
            with pytest.raises(ClientClosed):
                self.run(lambda: self.lc.attach_unknown(token, REQUEST, error))
            return
        task = self.run(lambda: self.lc.attach_unknown(token, REQUEST, error))
        self.tasks.append(task)
        self.lost.add(id(task))
        self.arrived_at[id(task)] = self.now
        if reached:  # the service made it: its callback may come
            self.service_id[id(task)] = f"task_{next(self.ids)}"
        if self.callbacks:
            assert task.phase is Phase.ANSWER_LOST
            assert task.started == self.now
        else:  # nothing can ever tell: the caller gets SubmissionUnknown at once
            assert task.phase is Phase.EXPIRED
            assert task.outcome is error
        if not task.done:  # reconciling it again finds the same task
            assert self.run(lambda: self.lc.attach_unknown(token, REQUEST, error)) is task

    # --- a collaborator dies, the receiver stops -----------------------------------------------

    @rule()
    def fail_all(self) -> None:
        """The poller or the fleet died: every live task ends now, none hangs."""
        live = self.lc.live()
        error = ServerError("the poller died", code=None)
        self.run(lambda: self.lc.fail_all(error))
        assert not self.lc.live()
        for task in live:
            assert task.phase is Phase.FAILED
            assert task.outcome is error
            if task.sent_at == float("inf"):  # never sent: and now it never will be
                with pytest.raises(ServerError):
                    self.run(lambda t=task: self.lc.send(t))  # type: ignore[misc]

    @precondition(lambda self: self.callbacks)
    @rule(others_may_tell=st.booleans())
    def callbacks_stop(self, others_may_tell: bool) -> None:
        """The receiver stopped: accepted tasks are polled now; lost answers end or wait."""
        accepted = [t for t in self.live(Phase.ACCEPTED) if t.task_id is not None]
        lost = [t for t in self.live(Phase.ANSWER_LOST) if t.task_id is None]
        polled = {id(t): self.watcher.polled_soon[id(t)] for t in accepted}
        self.run(lambda: self.lc.callbacks_stopped(others_may_tell=others_may_tell))
        self.callbacks = self.confirm = False
        assert self.watcher.stopped == 1
        for task in accepted:
            assert self.watcher.polled_soon[id(task)] == polled[id(task)] + 1
        for task in lost:
            if others_may_tell:
                assert task.phase is Phase.ANSWER_LOST  # another replica may hear it
            else:
                assert task.phase is Phase.EXPIRED
                assert isinstance(task.outcome, SubmissionUnknown)

    # --- the poller ----------------------------------------------------------------------------

    @rule(
        data=st.data(),
        kind=st.sampled_from(["invisible", "pending", "final", "other", "5xx", "401"]),
    )
    def poll(self, data: st.DataObject, kind: str) -> None:
        polled = [t for t in self.live(Phase.ACCEPTED, Phase.ANSWER_LOST) if t.task_id is not None]
        if not polled:
            return
        task = data.draw(st.sampled_from(polled))
        assert task.task_id == self.service_id[id(task)]
        record: TaskRecord | None = None
        error: BaseException | None = None
        if kind == "invisible":
            error = NotFound("recordInfo is null", code=404)
        elif kind == "pending":
            record = TaskRecord(task_id=task.task_id, state=TaskState.GENERATING)
        elif kind == "final":
            record = self.trusted_final.setdefault(id(task), final(task.task_id))
        elif kind == "other":
            record = final("someone_elses_task")
        elif kind == "5xx":
            error = ServerError("bad gateway", code=502)
        else:
            error = AuthenticationError("bad key", code=401)
        young = self.now - task.started < GRACE
        again = self.run(lambda: self.lc.poll_answer(task, record, error))
        if kind == "final":
            assert task.phase is Phase.RESOLVED
        elif kind in ("pending", "other", "5xx") or (kind == "invisible" and young):
            assert again
            assert not task.done
        else:
            assert task.phase is Phase.FAILED

    @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 15.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule(data=st.data())
    def deadline(self, data: st.DataObject) -> None:
        live = self.live(Phase.ACCEPTED, Phase.ANSWER_LOST)
        due = [t for t in live if self.now >= t.started + DEADLINE]
        if due:
            task = data.draw(st.sampled_from(due))
            self.run(lambda: self.lc.expire(task))
            assert task.phase is Phase.EXPIRED

    @rule(data=st.data(), kind=st.sampled_from(["expire", "poll", "refused", "accepted", "lost"]))
    def late_event(self, data: st.DataObject, kind: str) -> None:
        """A stale heap entry, a late poll or createTask answer reaching a finished task."""
        ended = [t for t in self.tasks if t.done]
        if not ended:
            return
        task = data.draw(st.sampled_from(ended))
        phase, outcome = task.phase, task.outcome
        record = final(task.task_id or "late")
        late: dict[str, Callable[[], object]] = {
            "expire": lambda: self.lc.expire(task),
            "poll": lambda: self.lc.poll_answer(task, record, None),
            "refused": lambda: self.lc.refused(task),
            # A late createTask answer names the service's id, for a request that reached it.
            "accepted": lambda: (
                self.lc.accepted(task, self.service_id.get(id(task), "x"))
                if id(task) in self.service_id
                else None
            ),
            "lost": lambda: self.lc.answer_lost(task, SubmissionUnknown("late", request=None)),
        }
        self.run(late[kind])
        assert task.phase is phase
        assert task.outcome is outcome

    @rule()
    def close(self) -> None:
        self.run(self.lc.close)
        assert not self.lc.live()

    # --- invariants --------------------------------------------------------------------------

    @invariant()
    def each_task_ends_exactly_once(self) -> None:
        for task in self.tasks:
            assert task.done == (task.outcome is not None)
            assert self.watcher.forgotten[id(task)] == (1 if task.done else 0)

    @invariant()
    def phases_never_go_back(self) -> None:
        for task in self.tasks:
            rank = RANK[task.phase]
            before = self.last_rank.get(id(task), 0)
            assert rank >= before, (task, before)
            if before == 3:  # final is final
                assert rank == 3
            self.last_rank[id(task)] = rank

    @invariant()
    def slots_add_up(self) -> None:
        holding = sum(1 for t in self.tasks if t.holds_slot)
        live_slotted = sum(1 for t in self.tasks if not t.done and id(t) in self.slotted)
        assert holding == self.lc.in_flight == live_slotted
        assert self.slots.free + self.lc.in_flight == LIMIT

    @invariant()
    def clocks_start_when_the_service_has_the_task(self) -> None:
        for task in self.tasks:
            if task.phase is Phase.QUEUED or task.phase is Phase.SENDING:
                assert task.started == float("inf")  # so no deadline either
            elif task.phase is Phase.ANSWER_LOST:
                assert task.started == self.arrived_at[id(task)]
            elif task.phase is Phase.ACCEPTED:
                assert task.started in (self.accepted_at.get(id(task)), self.arrived_at[id(task)])

    @invariant()
    def outcomes_fit_their_phase(self) -> None:
        for task in self.tasks:
            if not task.done:
                continue
            if task.phase is Phase.DROPPED:
                assert task.outcome is DROPPED
                continue
            error = task.outcome if isinstance(task.outcome, BaseException) else None
            if task.phase is Phase.RESOLVED:
                record = task.outcome
                assert isinstance(record, TaskRecord)
                assert record.task_id == task.task_id == self.service_id[id(task)]
                assert record == self.trusted_final[id(task)]
            elif task.phase is Phase.EXPIRED:
                expected: Any = SubmissionUnknown if id(task) in self.lost else TaskTimeout
                assert isinstance(error, expected), (task, error)
            else:
                assert isinstance(error, SeedreamError)


def test_lifecycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the machine; then every event of the table must have moved some task."""
    moved: Counter[Event] = Counter()
    move = Lifecycle._move

    def counting(self: Lifecycle, task: Task, event: Event) -> Phase | None:
        phase = move(self, task, event)
        if phase is not None:
            moved[event] += 1
        return phase

    monkeypatch.setattr(Lifecycle, "_move", counting)
    run_state_machine_as_test(
        LifecycleMachine,
        settings=settings(
            max_examples=300,
            stateful_step_count=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    assert set(moved) == set(Event), set(Event) - set(moved)
