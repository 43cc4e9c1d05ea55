"""
``edit_many``: a lazy, bounded, crash-safe batch over a client.

Inputs are pulled only as slots free up, so memory depends on ``max_in_flight``, not on how
many inputs there are. Every input yields exactly one ``BatchItem``; one failure never stops
the batch. With a journal, a rerun takes finished inputs from it, re-attaches accepted tasks
by id, reconciles unanswered submissions by their callback token, and submits only inputs
never sent. Breaking out stops new submissions; accepted tasks are still tracked (and
journaled) to their end.

A journal is checked against the inputs before anything new is sent: an input that the
journal has no row for, at an index up to the last journaled one, waits until every
journaled index was pulled and matched (a journal of other inputs raises ``JournalMismatch``
with nothing sent). This module sits below the client and drives its ``Tracker``.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from typing import cast

import attrs
from yarl import URL

from ._catalog import is_request
from ._errors import (
    DownloadError,
    InvalidRequest,
    SeedreamError,
    SubmissionUnknown,
    TaskFailed,
    TaskTimeout,
)
from ._journal import Entry, Journal, Stage
from ._lifecycle import Task
from ._models import EditRequest, EditResult, LocalImage, TaskRequest
from ._tracker import Tracker, outcome
from ._uploads import Uploader


class Status:
    """The outcome names a ``BatchItem`` reports."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    UNKNOWN = "unknown"
    DOWNLOAD_FAILED = "download_failed"
    ERROR = "error"


@attrs.frozen(kw_only=True)
class BatchItem:
    """One input's outcome: its ``result`` or its ``error`` (both if a download failed)."""

    index: int
    request: TaskRequest | None
    result: EditResult | None = None
    error: BaseException | None = None
    #: Where its images were saved, with ``download_to``.
    files: tuple[Path, ...] = ()
    #: True when the outcome came from the journal of an earlier run.
    from_journal: bool = False
    #: True when an earlier run sent its task (journaled) and this run tracked it to its end.
    resumed: bool = False

    @property
    def ok(self) -> bool:
        """True when the edit succeeded (and its download, if asked for)."""
        return self.result is not None and self.error is None

    @property
    def status(self) -> str:
        """``succeeded``, ``failed``, ``unknown``, ``download_failed`` or ``error``."""
        if self.result is not None:
            return Status.SUCCEEDED if self.error is None else Status.DOWNLOAD_FAILED
        if isinstance(self.error, TaskFailed):
            return Status.FAILED
        if isinstance(self.error, SubmissionUnknown | TaskTimeout):
            return Status.UNKNOWN
        return Status.ERROR


@attrs.define(kw_only=True)
class BatchProgress:
    """Live counts of a batch; pass one to ``edit_many`` and read it while it runs."""

    #: Inputs in total, when the caller knows (the CLI counts manifest lines).
    total: int | None = None
    pulled: int = 0
    #: createTask calls the service accepted in this run.
    submitted: int = 0
    succeeded: int = 0
    failed: int = 0
    unknown: int = 0
    errors: int = 0
    #: Outcomes taken from the journal of an earlier run.
    from_journal: int = 0
    #: Tasks an earlier run sent (an interrupted one), tracked to their end by this run.
    resumed: int = 0
    #: Local images uploaded in this run.
    uploaded: int = 0
    #: Inputs an earlier run may have submitted (it died with them on the wire), found in
    #: the journal: each waits for its callback up to ``may_exist_wait`` seconds.
    may_exist: int = 0
    may_exist_wait: float = 0.0
    #: Those still waiting.
    awaiting_callbacks: int = 0
    #: Credits paid for tasks this run sent, and for those earlier runs sent (the journal's
    #: outcomes and the resumed tasks).
    credits: float = 0.0
    credits_earlier: float = 0.0
    started: float = attrs.field(factory=time.monotonic)

    @property
    def done(self) -> int:
        """Inputs with an outcome."""
        return self.succeeded + self.failed + self.unknown + self.errors

    @property
    def running(self) -> int:
        """Inputs pulled and not yet ended."""
        return self.pulled - self.done

    @property
    def elapsed(self) -> float:
        """Seconds since the batch started."""
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Outcomes per second so far."""
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def count(self, item: BatchItem) -> None:
        """Add one outcome."""
        status = item.status
        if status == Status.SUCCEEDED:
            self.succeeded += 1
        elif status == Status.FAILED:
            self.failed += 1
        elif status == Status.UNKNOWN:
            self.unknown += 1
        else:
            self.errors += 1
        paid = item.result.record.credits_consumed if item.result is not None else None
        self.from_journal += item.from_journal
        self.resumed += item.resumed
        if item.from_journal or item.resumed:
            self.credits_earlier += paid or 0.0
        elif paid:
            self.credits += paid


#: What a file name may hold of an input's own name (the rest becomes ``_``).
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class _ImageNames:
    """
    The file stem of each input's result images, claimed in input order: a local file's
    own stem (``img0.png``: ``img0_0.png``), else the index (``000003_0.png``).

    A stem already claimed in the run (``a/img.png`` and ``b/img.png``, or ``IMG.png`` on
    a case-blind disk) gets the index too, so no result overwrites another and a rerun of
    the same inputs names every file the same way, whichever task ends first.
    """

    __slots__ = ("_claimed", "_stems")

    def __init__(self) -> None:
        self._claimed: set[str] = set()
        self._stems: dict[int, str] = {}

    def claim(self, index: int, request: object) -> None:
        """Name the images of input ``index`` (call in input order)."""
        if isinstance(request, EditRequest):
            first: object = request.image_urls[0]
        else:  # another model's: its images, if it takes any
            first = next(iter(getattr(request, "image_urls", ())), None)
        if not isinstance(first, LocalImage):
            return
        stem = _UNSAFE.sub("_", first.path.stem)[:80]
        stem = stem if stem[:1].isalnum() else f"img{stem}"
        while stem.lower() in self._claimed:  # again if a file is named ``img-000004``
            stem = f"{stem}-{index:06d}"
        self._claimed.add(stem.lower())
        self._stems[index] = stem

    def stem(self, index: int) -> str:
        """The stem claimed for input ``index``."""
        return self._stems.get(index) or f"{index:06d}"

    def forget(self, index: int) -> None:
        """Input ``index`` has its outcome (its stem stays claimed)."""
        self._stems.pop(index, None)


class _Slot:
    """
    One input in progress; ``sent`` once its createTask may have gone out.

    Its ``on_sent`` and ``on_accepted`` are the submission's hooks: methods, not closures
    (each closure and its cells are objects the cyclic GC counts and scans, per input).
    """

    __slots__ = ("entry", "index", "journal", "progress", "request", "sent", "task", "token")

    def __init__(
        self,
        index: int,
        request: object,
        entry: Entry | None,
        journal: Journal | None,
        progress: BatchProgress,
    ) -> None:
        self.index = index
        self.request = request
        self.entry = entry
        self.journal = journal
        self.progress = progress
        self.sent = False
        self.token: str | None = None
        #: Its work; None when the journal already had its outcome.
        self.task: asyncio.Task[BatchItem] | None = None

    def on_sent(self) -> Awaitable[None] | None:
        """createTask is about to go out: journal it first (the future: until it is durable)."""
        self.sent = True
        if self.journal is None:
            return None
        return self.journal.sending(self.index, cast("TaskRequest", self.request), self.token)

    def on_unsent(self) -> None:
        """It made no task (a 429): back to never sent while it waits, so a kill meanwhile
        leaves it for the rerun to send, not ``sending`` (which a rerun never sends)."""
        if self.journal is not None:
            self.journal.forget(self.index)

    def on_accepted(self, task: Task) -> None:
        """The service accepted it (even if the batch stopped meanwhile)."""
        self.progress.submitted += 1
        if self.journal is not None and task.task_id:
            self.journal.accepted(self.index, task.task_id)


class BatchRunner:
    """Runs one ``edit_many`` call."""

    def __init__(
        self,
        tracker: Tracker,
        *,
        journal: Journal | None,
        download_to: Path | None,
        progress: BatchProgress,
        retry_failed: bool = False,
    ) -> None:
        self._tracker = tracker
        #: Inputs journaled ``failed`` are submitted again (never ``unknown`` or accepted ones).
        self._retry_failed = retry_failed
        #: Closed by the runner once no item of it can write any more.
        self._journal = journal
        self._download_to = download_to
        self.progress = progress
        self._running: dict[int, _Slot] = {}
        self._done: asyncio.Queue[asyncio.Task[BatchItem]] = asyncio.Queue()
        #: Outcomes already known (from the journal), handed out before waiting on any task.
        self._ready: deque[BatchItem] = deque()
        self._adopted = 0
        self._names = _ImageNames()
        #: Seconds to wait for the callbacks of what an earlier run may have submitted.
        self._may_exist_wait: float | None = None

    async def run(
        self, requests: Iterable[TaskRequest] | AsyncIterable[TaskRequest], *, ordered: bool
    ) -> AsyncIterator[BatchItem]:
        """Yield one item per input, as tasks end (or in input order)."""
        uploader = self._listen_for_uploads()
        window = self._tracker.settings.max_in_flight
        pull = _puller(requests)
        exhausted = False
        waiting: dict[int, BatchItem] = {}
        #: Inputs never journaled, held back until the journal is checked up to ``last``.
        deferred: deque[tuple[int, object]] = deque()
        last = self._journal.last_index() if self._journal is not None else None
        self._may_exist_wait = self._count_unanswered(last)
        next_index = 0
        index = 0
        try:
            while True:
                checked = exhausted or last is None or index > last
                # While checking, ordered results wait outside the window (or it could jam).
                while len(self._running) + (len(waiting) if checked else 0) < window:
                    if deferred and checked:
                        self._start(*deferred.popleft(), None)
                        continue
                    if exhausted:
                        break
                    try:
                        request = await pull()
                    except StopAsyncIteration:
                        exhausted = checked = True
                        continue
                    self.progress.pulled += 1
                    if self._download_to is not None:
                        self._names.claim(index, request)
                    # Beyond ``last`` the journal holds only what this run writes: no lookup.
                    entry = None if last is None or index > last else self._entry(index, request)
                    if entry is None and last is not None and index <= last:
                        deferred.append((index, request))
                    else:
                        self._start(index, request, entry)
                    index += 1
                    checked = last is None or index > last
                if not self._running and not waiting and not deferred:
                    return
                item = await self._next_done()
                if not ordered:
                    yield item
                    continue
                waiting[item.index] = item
                while next_index in waiting:
                    yield waiting.pop(next_index)
                    next_index += 1
        finally:
            uploader.listeners.remove(self._uploaded)
            self._stop()

    def _count_unanswered(self, last: int | None) -> float | None:
        """
        Count the inputs an earlier run may have submitted (``sending``: possibly on the wire
        when it died), and return how long to wait for their callbacks: the visibility grace
        when this run listens where that one did (or the journal does not say), else none.
        Journals where this run's callbacks go, for the next.
        """
        journal = self._journal
        if journal is None:
            return None
        here = self._tracker.callbacks_url()
        earlier = journal.callbacks_went_to()
        if earlier != here:
            journal.callbacks_go_to(here)
        if last is None:
            return None
        grace = self._tracker.settings.visibility_grace
        wait = grace if here and earlier in (here, None) else 0.0
        found = journal.counts().get(Stage.SENDING, 0)
        self.progress.may_exist = self.progress.awaiting_callbacks = found
        self.progress.may_exist_wait = wait
        return wait

    def _listen_for_uploads(self) -> Uploader:
        """Reuse the journal's uploads, and journal (and count) the ones this run makes."""
        uploader = self._tracker.uploader
        assert uploader is not None
        if self._journal is not None:
            for sha256, url, at in self._journal.uploads():
                uploader.remember(sha256, URL(url), at)
        uploader.listeners.append(self._uploaded)
        return uploader

    def _uploaded(self, sha256: str, url: URL, at: float) -> None:
        self.progress.uploaded += 1
        if self._journal is not None:
            self._journal.uploaded(sha256, url, at)

    def _entry(self, index: int, request: object) -> Entry | None:
        """The journal's row for this input; ``JournalMismatch`` if it is another input's."""
        if self._journal is None or not is_request(request):
            return None
        return self._journal.get(index, cast("TaskRequest", request))

    def _start(self, index: int, request: object, entry: Entry | None) -> None:
        slot = _Slot(index, request, entry, self._journal, self.progress)
        self._running[index] = slot
        if (
            entry is not None
            and entry.stage.is_final
            and is_request(request)
            and (self._download_to is None or entry.stage is not Stage.SUCCEEDED)
            and not (self._retry_failed and entry.stage is Stage.FAILED)
        ):
            # Known from the journal, nothing to do: no task (a resumed million stays quick).
            self._ready.append(self._journaled_item(entry, cast("TaskRequest", request)))
            return
        task = asyncio.create_task(self._item(slot))
        slot.task = task
        task.add_done_callback(self._done.put_nowait)

    async def _next_done(self) -> BatchItem:
        # A task's result: a journal or disk failure there is fatal for the batch.
        item = self._ready.popleft() if self._ready else (await self._done.get()).result()
        del self._running[item.index]
        self._names.forget(item.index)
        self.progress.count(item)
        return item

    def _stop(self) -> None:
        """Stop new submissions; let accepted tasks run to their end (and journal)."""
        for slot in self._running.values():
            if slot.task is None:
                continue  # its outcome came from the journal: nothing runs
            if slot.sent:
                self._adopted += 1
                slot.task.add_done_callback(self._adopted_done)
                self._tracker.adopt(slot.task)
            else:
                slot.task.cancel()
        if not self._adopted and self._journal:
            self._journal.close()

    def _adopted_done(self, _: object) -> None:
        self._adopted -= 1
        if not self._adopted and self._journal:
            self._journal.close()

    async def _item(self, slot: _Slot) -> BatchItem:
        request, entry = slot.request, slot.entry
        if not is_request(request):
            error = InvalidRequest(
                "requests", f"input {slot.index} is not a request: {type(request).__name__}"
            )
            return BatchItem(index=slot.index, request=None, error=error)
        request = cast("TaskRequest", request)
        if entry is not None and entry.stage is Stage.FAILED and self._retry_failed:
            assert self._journal is not None
            # Its task failed: nothing more is owed on it. Until the new ``sending`` row is
            # written the input is simply unsent, which a rerun would send too.
            self._journal.forget(slot.index)
            entry = slot.entry = None
        if entry is not None and entry.stage.is_final:
            return await self._from_journal(entry, request)
        if entry is None:
            return await self._tracked(slot, request, None)
        slot.sent = True  # by an earlier run: its task (and its price) is that run's
        return attrs.evolve(await self._tracked(slot, request, entry), resumed=True)

    async def _tracked(self, slot: _Slot, request: TaskRequest, entry: Entry | None) -> BatchItem:
        """Submit the input (or resume its journaled task) and follow it to its outcome."""
        try:
            handle = await self._handle(slot, request, entry)
        except SubmissionUnknown as e:
            return self._ended(slot, request, e)
        except SeedreamError as e:
            # The service refused it (or it was never sent): no task exists to pay for.
            if self._journal is not None and entry is None:
                self._journal.forget(slot.index)
            return BatchItem(index=slot.index, request=request, error=e)
        try:
            result = outcome(await handle.wait(), handle.request)
        except SeedreamError as e:
            return self._ended(slot, request, e)
        if self._journal:
            self._journal.succeeded(slot.index, result)
        return await self._download(slot.index, request, result)

    async def _handle(self, slot: _Slot, request: TaskRequest, entry: Entry | None) -> Task:
        if entry is not None and entry.task_id is not None:
            return self._tracker.resume(entry.task_id, request, entry.token)
        if entry is not None:  # sent in an earlier run, answer never journaled
            try:
                return await self._tracker.reconcile(
                    entry.token, request, wait=self._may_exist_wait
                )
            finally:
                self.progress.awaiting_callbacks -= 1
        slot.token = token = self._tracker.new_token()
        # ``owned``: this task is the batch's own, and ``_stop`` never cancels a sent one.
        return await self._tracker.submit(
            request,
            token=token,
            on_sent=slot.on_sent,
            on_unsent=slot.on_unsent,
            on_accepted=slot.on_accepted,
            owned=True,
        )

    def _ended(self, slot: _Slot, request: TaskRequest, error: SeedreamError) -> BatchItem:
        item = BatchItem(index=slot.index, request=request, error=error)
        journal = self._journal
        if journal is None:
            return item
        if isinstance(error, TaskFailed):
            journal.ended(slot.index, Stage.FAILED, error)
        elif isinstance(error, SubmissionUnknown):
            journal.ended(slot.index, Stage.UNKNOWN, error)
        # Otherwise (a deadline, the client closing) the task id stays: a rerun resumes it.
        return item

    async def _from_journal(self, entry: Entry, request: TaskRequest) -> BatchItem:
        item = self._journaled_item(entry, request)
        if item.result is None:
            return item
        item = await self._download(entry.index, request, item.result)
        return attrs.evolve(item, from_journal=True)

    @staticmethod
    def _journaled_item(entry: Entry, request: TaskRequest) -> BatchItem:
        """An input's outcome as an earlier run journaled it (images not fetched here)."""
        if entry.stage is not Stage.SUCCEEDED or entry.record is None:
            error = _journaled_error(entry)
            return BatchItem(index=entry.index, request=request, error=error, from_journal=True)
        result = EditResult(
            task_id=entry.record.task_id,
            urls=entry.record.result_urls,
            record=entry.record,
            request=request,
        )
        return BatchItem(
            index=entry.index, request=request, result=result, files=entry.files, from_journal=True
        )

    async def _download(self, index: int, request: TaskRequest, result: EditResult) -> BatchItem:
        if self._download_to is None:
            return BatchItem(index=index, request=request, result=result)
        assert self._tracker.downloader is not None
        try:
            files = await self._tracker.downloader.fetch_all(
                result.urls, self._download_to, self._names.stem(index), owner=result.task_id
            )
        except DownloadError as e:
            return BatchItem(index=index, request=request, result=result, error=e)
        if self._journal:
            self._journal.downloaded(index, files)
        return BatchItem(index=index, request=request, result=result, files=tuple(files))


def _journaled_error(entry: Entry) -> SeedreamError:
    message = f"from the journal: {entry.error}"
    if entry.stage is Stage.FAILED:
        task_id = entry.task_id or "?"
        return TaskFailed(task_id, None, message)
    return SubmissionUnknown(message, request=None)


def _puller(
    requests: Iterable[TaskRequest] | AsyncIterable[TaskRequest],
) -> Callable[[], Awaitable[TaskRequest]]:
    """Return an awaitable next() over either kind of iterable (sync ones without a wrapper)."""
    if isinstance(requests, AsyncIterable):
        return aiter(requests).__anext__
    iterator = iter(requests)

    async def pull() -> TaskRequest:
        try:
            return next(iterator)
        except StopIteration:
            raise StopAsyncIteration from None

    return pull
