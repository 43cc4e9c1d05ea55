"""
The tracker: runs submissions through their lifecycle, and owns what that needs.

It is the one internal seam the client facade and the batch runner both use: ``submit``
(slot, register, a turn on the wire, createTask, then the lifecycle's events), ``resume``,
``reconcile``, the in-flight slots, the poller, the receiver's attachment, the downloader and
every background task. It starts once (``start``), and ``close`` is final: queued
submissions, limiter and slot waiters get ``ClientClosed`` at once, and nothing is sent or
scheduled afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Coroutine

import aiohttp

from ._account import Account
from ._config import Settings
from ._coordination import Coordinator, LocalCoordinator
from ._downloads import Downloader
from ._errors import ClientClosed, InvalidRequest, SubmissionUnknown, TaskFailed
from ._lifecycle import Lifecycle, Phase, Task
from ._limits import Slots
from ._models import EditResult, TaskRecord, TaskRequest, TaskState
from ._poller import Poller
from ._receiver import CallbackReceiver
from ._telemetry import Telemetry
from ._transport import OnSend, Transport, as_url
from ._uploads import Uploader

log = logging.getLogger("seedream_async")

OnAccepted = Callable[[Task], object]
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


def check_token(token: str | None) -> None:
    """A callback token goes into a URL unescaped: only our own URL-safe alphabet."""
    if token is not None and (not isinstance(token, str) or not _TOKEN.fullmatch(token)):
        raise InvalidRequest("token", "must be 16 to 128 URL-safe characters")


def outcome(record: TaskRecord, request: TaskRequest | None) -> EditResult:
    """Turn a final record into an ``EditResult``, or raise ``TaskFailed``."""
    if record.state is not TaskState.SUCCESS:
        raise TaskFailed(record.task_id, record.fail_code, record.fail_msg)
    return EditResult(
        task_id=record.task_id, urls=record.result_urls, record=record, request=request
    )


class _Sending:
    """
    What runs just before createTask goes out: the lifecycle's ``send`` (which refuses, with
    ``ClientClosed``, once the client closed), then the submitter's own hook; and the
    submitter's ``on_unsent`` when an attempt provably made no task (a 429).

    One object per submission rather than a closure, its function and three cells: the
    cyclic GC counts and scans every object an edit allocates.
    """

    __slots__ = ("lifecycle", "on_sent", "on_unsent", "task", "wire")

    def __init__(
        self,
        lifecycle: Lifecycle,
        task: Task,
        on_sent: OnSend | None,
        on_unsent: OnSend | None,
        wire: Slots | None,
    ) -> None:
        self.lifecycle = lifecycle
        self.task = task
        self.on_sent = on_sent
        self.on_unsent = on_unsent
        #: The submission's turn on the wire, held until its createTask is over.
        self.wire = wire

    def __call__(self) -> object:
        self.lifecycle.send(self.task)
        return self.on_sent() if self.on_sent is not None else None

    def unsent(self) -> None:
        """An attempt made no task (a 429, no connection): it waits to try again."""
        if self.on_unsent is not None:
            self.on_unsent()

    def off_wire(self) -> None:
        """Give the turn on the wire to the next submission (once, whoever calls first)."""
        wire, self.wire = self.wire, None
        if wire is not None:
            wire.release()


def _connections(session: aiohttp.ClientSession) -> int | None:
    """How many requests ``session`` runs at once to one host; None when it has no limit."""
    connector = session.connector
    if connector is None:
        return None
    limits = [n for n in (connector.limit, connector.limit_per_host) if n > 0]
    return min(limits) if limits else None


class Tracker:
    """Submissions and their tasks for one client."""

    def __init__(
        self,
        settings: Settings,
        receiver: CallbackReceiver | None,
        coordinator: Coordinator | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.settings = settings
        self.telemetry = telemetry or Telemetry()
        self.receiver = receiver
        self.coordinator: Coordinator = coordinator or LocalCoordinator()
        self.slots = Slots(settings.max_in_flight)
        #: The account's conditions (401, 402, 433, 455, an outage), shared by every submission.
        self.account = Account(settings)
        confirm = receiver is not None and receiver.confirm_with_record_info
        self.lifecycle = Lifecycle(
            settings,
            self.slots,
            callbacks=receiver is not None,
            confirm_callbacks=confirm,
            telemetry=self.telemetry,
        )
        self.transport: Transport | None = None
        self.uploader: Uploader | None = None
        self.poller: Poller | None = None
        self.downloader: Downloader | None = None
        #: createTasks on the wire at once: as many as the session has connections for them.
        #: Submissions past that wait here as a future each, not as a createTask task with an
        #: aiohttp request queued for a connection: a client parking thousands of edits (or
        #: held back by the createTask limit) keeps a fraction of the objects per waiting
        #: edit, which the cyclic GC counts and scans. None: the connector has no limit.
        self.wire: Slots | None = None
        self._background: set[asyncio.Task[object]] = set()

    @property
    def started(self) -> bool:
        """True once ``start`` ran."""
        return self.transport is not None

    def start(
        self, transport: Transport, session: aiohttp.ClientSession, uploader: Uploader
    ) -> None:
        """Wire the collaborators once the client has a session (and its receiver runs)."""
        if self.lifecycle.closed:
            raise ClientClosed("this client is closed; make a new one")
        self.transport = transport
        self.uploader = uploader
        self.account.start(transport.credits, self._account_work)
        self.poller = Poller(
            transport,
            self.lifecycle,
            self.settings,
            safety_net=self.receiver is not None,
            coordinator=self.coordinator,
        )
        self.downloader = Downloader.for_settings(session, self.settings, telemetry=self.telemetry)
        if (turns := _connections(session)) is not None:
            self.wire = Slots(turns)
        if self.coordinator.shared:
            self.lifecycle.on_final = self.coordinator.share
            self.lifecycle.on_slot_freed = self._free_fleet_slot
        if self.receiver is not None:
            self.receiver.attach(self.lifecycle, self.coordinator)
        for task in self.lifecycle.live():  # resumed before the client was open
            if task.phase is Phase.ACCEPTED:
                self.poller.watch(task, poll_now=True)

    def _account_work(self, work: Coroutine[object, object, object]) -> None:
        self.spawn(work, name="seedream-account")

    def close(self) -> None:
        """Final, and at once: every live task and every waiter gets ``ClientClosed``."""
        self.lifecycle.close()
        self.slots.close()
        if self.wire is not None:
            self.wire.close()
        if self.transport is not None:
            self.transport.close()

    async def aclose(self) -> None:
        """``close``, then stop every background task, the poller and the downloader (the
        client closes the coordinator: only one it started)."""
        self.close()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.poller is not None:
            await self.poller.aclose()
        if self.receiver is not None:
            self.receiver.detach(self.lifecycle)
        if self.downloader is not None:
            await self.downloader.aclose()

    def new_token(self) -> str | None:
        """A fresh callback token, or None when nothing can call back."""
        if self.receiver is None or not self.lifecycle.callbacks:
            return None  # nothing can call back (or no longer: the receiver stopped)
        return secrets.token_urlsafe(18)

    # --- submitting ---------------------------------------------------------------------

    async def submit(
        self,
        request: TaskRequest,
        *,
        token: str | None = None,
        on_sent: OnSend | None = None,
        on_unsent: OnSend | None = None,
        on_accepted: OnAccepted | None = None,
        owned: bool = False,
    ) -> Task:
        """
        Submit one edit; return its task once the service accepted it.

        ``on_sent`` runs just before createTask goes out (journal it there; a future it
        returns is awaited before sending, say until the journal row is durable), before each
        attempt; ``on_unsent`` after an attempt that provably made no task (a 429, no
        connection), before it waits to try again; ``on_accepted`` runs once the task id is
        known, even if the caller was cancelled meanwhile.

        ``owned``: the calling task is the SDK's own and is never cancelled once ``on_sent``
        ran (a batch item: the batch adopts those), so createTask runs in it, without a task
        of its own. Cancelled there all the same (the event loop shutting down), the
        submission is kept as one whose answer was lost.
        """
        assert self.transport is not None, "start() first"
        assert self.uploader is not None
        if token is None or self.receiver is None:
            token = self.new_token()  # (None when nothing can call back)
        # Local images become URLs first (nothing is paid for an upload): createTask only
        # ever sees http(s), and a slow upload never holds an in-flight slot.
        # Held back by the account (a pause is waited out here, before taking a slot), or
        # with local images: the coroutine only then.
        sendable = (
            await self._ready(request)
            if request.local_images or self.account.hold is not None
            else request
        )
        if not self.slots.take():  # (the usual case takes one without a coroutine)
            await self.slots.acquire()
        try:
            task = self.lifecycle.queue(request, token, holds_slot=True)
        except BaseException:
            self.slots.release()
            raise
        callback_url = None if task.token is None else self._callback_url(task.token)
        if self.coordinator.shared:
            await self._enter_fleet(task)
        if (wire := self.wire) is not None and not wire.take():
            await self._wait_for_the_wire(wire, task)
        sending = _Sending(self.lifecycle, task, on_sent, on_unsent, wire)
        loop = asyncio.get_running_loop()
        create: asyncio.Task[str | Exception] | None = None
        answer: Awaitable[str]
        if owned:  # in this very task, which the owner never cancels once it is sent
            answer = self.transport.create_task(sendable, callback_url, sending)
        else:
            # createTask runs in a task of its own and relays its answer to a future the
            # caller awaits: cancelling the caller cancels that future, never the request (a
            # request aborted after it went out may have made a task nobody would know of).
            # The relay is ``asyncio.shield`` without its future, two callbacks and a loop turn.
            answer = loop.create_future()
            create = loop.create_task(self._create(sendable, callback_url, sending, answer))
        try:
            try:
                task_id = await answer
            finally:
                if create is None:
                    sending.off_wire()
        except asyncio.CancelledError:
            self._cancelled(
                task, create, sending, answer, callback_url=callback_url, on_accepted=on_accepted
            )
            raise
        except SubmissionUnknown as e:
            return await self._await_unknown(task, e, on_accepted)
        except BaseException:
            self.lifecycle.refused(task)
            raise
        self._accepted(task, task_id, on_accepted)
        return task

    async def _ready(self, request: TaskRequest) -> TaskRequest:
        """Wait out (or raise) an account condition, then upload local images."""
        assert self.uploader is not None
        if self.account.hold is not None:
            await self.account.admit()
        return await self.uploader.resolve(request) if request.local_images else request

    async def _wait_for_the_wire(self, wire: Slots, task: Task) -> None:
        """Wait for a turn on the wire; cancelled, or the client closed, nothing went out."""
        try:
            await wire.acquire()
        except BaseException:
            self.lifecycle.refused(task)
            raise

    def _cancelled(
        self,
        task: Task,
        create: asyncio.Task[str | Exception] | None,
        sending: _Sending,
        answer: Awaitable[str],
        *,
        callback_url: str | None,
        on_accepted: OnAccepted | None,
    ) -> None:
        """The submitting caller was cancelled: nothing went out, or keep tracking the task."""
        if isinstance(answer, asyncio.Future) and answer.done() and not answer.cancelled():
            answer.exception()  # (the relay's future) answered as the caller was cancelled
        if task.phase is Phase.QUEUED:  # nothing went out: stop it there
            if create is not None:
                create.cancel()
            sending.off_wire()  # (a task cancelled before it ran never reaches its own)
            self.lifecycle.refused(task)
        elif create is not None:  # it may exist: keep tracking it in the background
            create.add_done_callback(lambda f: self._settle(task, f, on_accepted))
        else:  # an owned submission cancelled after all (loop shutdown): its answer is lost
            lost = SubmissionUnknown(
                "cancelled while createTask was on the wire",
                request=task.request,
                callback_url=as_url(callback_url),
            )
            self.lifecycle.answer_lost(task, lost)  # a callback may still tell

    async def _enter_fleet(self, task: Task) -> None:
        """Register the token with the fleet (before its callback can come), and take an
        account-wide slot when those are capped; refused on failure, nothing sent."""
        try:
            if task.token is not None:
                await self.coordinator.register(task.token)
            key = task.token or secrets.token_urlsafe(12)
            await self.coordinator.hold(key)
            task.fleet_key = key
        except BaseException:
            self.lifecycle.refused(task)
            raise

    def _free_fleet_slot(self, task: Task) -> None:
        if task.fleet_key is not None:
            self.coordinator.unhold(task.fleet_key)

    def resume(self, task_id: str, request: TaskRequest | None, token: str | None) -> Task:
        """Track a task accepted earlier (even by another process): a fleet's record, or a poll."""
        if not self.coordinator.shared:
            return self.lifecycle.attach(task_id, request, token)
        task = self.lifecycle.attach(task_id, request, token, poll_now=False)
        if not task.done:
            self.spawn(self._from_fleet(task), name="seedream-resume")
        return task

    async def _from_fleet(self, task: Task) -> None:
        """Resolve ``task`` from the record the fleet keeps, else poll it now."""
        record = await self.coordinator.stored(task_id=task.task_id)
        if record is not None:
            self.lifecycle.poll_answer(task, record, None, via="fleet")
        elif not task.done and self.poller is not None:
            self.poller.watch(task, poll_now=True)

    async def reconcile(
        self, token: str | None, request: TaskRequest, *, wait: float | None = None
    ) -> Task:
        """
        Wait for the callback of a submission whose answer was lost: until the deadline, or
        (``wait``) that many seconds, after which one no callback named ends unknown.
        """
        unknown = SubmissionUnknown(
            "createTask was sent in an earlier run and its answer never came", request=request
        )
        if token is None or self.receiver is None or wait == 0:
            raise unknown
        task = self.lifecycle.attach_unknown(token, request, unknown)
        if self.coordinator.shared and not task.done:
            record = await self.coordinator.stored(token=token)
            if record is not None:
                self.lifecycle.offer(token, record, via="fleet")
        if wait is None:
            await task.wait()
        else:
            await self._callback_within(task, wait)
        return task

    async def _callback_within(self, task: Task, wait: float) -> None:
        """Wait ``wait`` seconds for a callback to name ``task``; unnamed then, it ends
        unknown (named, it is polled to its end like any accepted task)."""
        waiter = task.wait()
        try:
            await asyncio.wait((waiter,), timeout=wait)
            if not waiter.done() and task.task_id is None:
                self.lifecycle.expire(task)
            await waiter
        finally:
            waiter.cancel()  # (a no-op once it has its outcome)

    def callbacks_url(self) -> str:
        """Where this client's callbacks go (the part before the token); "" for nowhere."""
        if self.receiver is None or not self.lifecycle.callbacks:
            return ""
        return self.receiver.url_string("")

    def _callback_url(self, token: str) -> str:
        assert self.receiver is not None
        return self.receiver.url_string(token)

    def _accepted(self, task: Task, task_id: str, on_accepted: OnAccepted | None) -> None:
        self.lifecycle.accepted(task, task_id)
        if on_accepted is not None:
            on_accepted(task)

    async def _create(
        self,
        request: TaskRequest,
        callback_url: str | None,
        on_send: _Sending,
        answer: asyncio.Future[str],
    ) -> str | Exception:
        """createTask; its outcome goes to ``answer`` (unless the caller gave up), and back."""
        assert self.transport is not None
        try:
            task_id = await self.transport.create_task(request, callback_url, on_send)
        except asyncio.CancelledError:
            answer.cancel()
            raise
        except Exception as e:
            if not answer.done():
                answer.set_exception(e)
            return e  # returned, not raised: this task's outcome is read by ``_settle`` alone
        finally:
            on_send.off_wire()
        if not answer.done():
            answer.set_result(task_id)
        return task_id

    def _settle(
        self, task: Task, create: asyncio.Task[str | Exception], on_accepted: OnAccepted | None
    ) -> None:
        """Finish a submission whose caller was cancelled after createTask went out."""
        if create.cancelled():
            self.lifecycle.refused(task)
        elif isinstance(outcome := create.result(), SubmissionUnknown):
            self.lifecycle.answer_lost(task, outcome)
        elif isinstance(outcome, Exception):
            self.lifecycle.refused(task)
        else:
            self._accepted(task, outcome, on_accepted)

    async def _await_unknown(
        self, task: Task, error: SubmissionUnknown, on_accepted: OnAccepted | None
    ) -> Task:
        """Wait for a callback to prove the task exists; ``error`` at the deadline."""
        self.lifecycle.answer_lost(task, error)
        if not task.done:
            log.warning("createTask answer lost; waiting for the callback to tell: %s", error)
        await task.wait()
        if on_accepted is not None:
            on_accepted(task)
        return task

    # --- background work --------------------------------------------------------------------

    def spawn(self, work: Coroutine[object, object, object], *, name: str) -> asyncio.Task[object]:
        """Run ``work`` until it ends or the client closes; a failure is logged, never lost."""
        task = asyncio.create_task(work, name=name)
        self.adopt(task)
        return task

    def adopt(self, task: asyncio.Task[object]) -> None:
        """Keep a background task alive until it ends or the client closes."""
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("background work %s failed", task.get_name(), exc_info=error)
