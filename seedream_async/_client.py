"""``SeedreamClient``: owns the session, the receiver it started and the poller."""

from __future__ import annotations

import asyncio
import enum
import logging
import re
import secrets
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
import attrs
from yarl import URL

from ._batch import BatchItem, BatchProgress, BatchRunner
from ._config import Settings, resolve_api_key, resolve_base_url
from ._downloads import Downloader
from ._errors import ApiError, ClientClosed, InvalidRequest, SubmissionUnknown, TaskFailed
from ._journal import Journal
from ._models import AspectRatio, EditRequest, EditResult, Quality, TaskRecord, TaskState
from ._poller import Poller
from ._receiver import CallbackReceiver
from ._transport import Transport
from ._waiters import Pending, Registry

log = logging.getLogger("seedream_async")

OnAccepted = Callable[[Pending], object]
_TOKEN = re.compile(r"[A-Za-z0-9_-]{16,128}")


def _check_token(token: str | None) -> None:
    """A callback token goes into a URL unescaped: only our own URL-safe alphabet."""
    if token is not None and not _TOKEN.fullmatch(token):
        raise InvalidRequest("token", "must be 16 to 128 URL-safe characters")


class ClientState(enum.Enum):
    """A client is used once: opened on first use, never reopened after close."""

    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


def outcome(record: TaskRecord, request: EditRequest | None) -> EditResult:
    """Turn a final record into an ``EditResult``, or raise ``TaskFailed``."""
    if record.state is not TaskState.SUCCESS:
        raise TaskFailed(record.task_id, record.fail_code, record.fail_msg)
    return EditResult(
        task_id=record.task_id, urls=record.result_urls, record=record, request=request
    )


class TaskHandle:
    """A task the service accepted; await ``result()`` for its outcome."""

    __slots__ = ("_client", "_pending")

    def __init__(self, client: SeedreamClient, pending: Pending) -> None:
        self._client = client
        self._pending = pending

    def __repr__(self) -> str:
        return f"<TaskHandle {self.task_id} done={self.done()}>"

    @property
    def task_id(self) -> str:
        """The service's id for this task."""
        assert self._pending.task_id is not None
        return self._pending.task_id

    @property
    def request(self) -> EditRequest | None:
        """The request, when this process submitted it (or passed it to ``resume``)."""
        return self._pending.request

    @property
    def token(self) -> str | None:
        """The callback token this task was submitted with, if any."""
        return self._pending.token

    def done(self) -> bool:
        """True once the task's outcome is known (whichever way)."""
        return self._pending.done

    async def result(self) -> EditResult:
        """Wait for the task to end; cancelling this wait never stops tracking the task."""
        record = await asyncio.shield(self._pending.future)
        return outcome(record, self._pending.request)

    async def record(self) -> TaskRecord:
        """Ask the service for the task's current record."""
        return await self._client.get_task(self.task_id)


class SeedreamClient:
    """
    An asyncio client for Seedream 4.5 Edit; share one per process.

    ``api_key`` falls back to ``$APIKLEY_API_KEY`` and ``base_url`` to ``$APIKLEY_BASE_URL``.
    A ``session`` you pass is used and never closed; one the client makes is closed by
    ``aclose()``. With ``callbacks=CallbackReceiver(...)`` tasks are resolved by the
    service's callbacks (polling is the safety net); without, by polling.
    """

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | URL | None = None,
        session: aiohttp.ClientSession | None = None,
        callbacks: CallbackReceiver | None = None,
        settings: Settings | None = None,
        max_in_flight: int | None = None,
    ) -> None:
        settings = settings or Settings()
        if max_in_flight is not None:
            settings = attrs.evolve(settings, max_in_flight=max_in_flight)
        self.settings = settings
        self.base_url = resolve_base_url(base_url)
        self._api_key = resolve_api_key(api_key)
        self._session = session
        self._owns_session = session is None
        self._receiver = callbacks
        self._owns_receiver = False
        self._state = ClientState.UNOPENED
        self._start_lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(settings.max_in_flight)
        self._in_flight = 0
        self._registry = Registry()
        self._registry.on_resolved = self._resolved
        self._transport: Transport | None = None
        self._poller: Poller | None = None
        self._downloader: Downloader | None = None
        #: Callback confirmations and resume watchers, cancelled by aclose().
        self._background: set[asyncio.Task[Any]] = set()

    def __repr__(self) -> str:
        mode = "callbacks" if self._receiver is not None else "polling"
        return f"<SeedreamClient {self.base_url} {mode} {self._state.name.lower()}>"

    def __del__(self) -> None:
        session = self.__dict__.get("_session")
        if self.__dict__.get("_owns_session") and session is not None and not session.closed:
            warnings.warn(
                f"unclosed {self!r}; use 'async with' or await aclose()",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )

    @property
    def in_flight(self) -> int:
        """Tasks submitted by this client and not yet final."""
        return self._in_flight

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> SeedreamClient:
        await self._open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _open(self) -> Transport:
        if self._transport is not None:
            return self._transport
        async with self._start_lock:
            if self._state is ClientState.CLOSED:
                raise ClientClosed("this client is closed; make a new one")
            return self._transport or await self._start()

    async def _start(self) -> Transport:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.connection_limit)
            )
        receiver = self._receiver
        if receiver is not None:
            receiver.attach(self._registry)
            if not receiver.running and receiver.needs_server:
                await receiver.start()
                self._owns_receiver = True
            if receiver.confirm_with_record_info:
                self._registry.on_callback = self._confirm
        transport = Transport(self._session, self.base_url, self._api_key, self.settings)
        self._poller = Poller(
            transport, self._registry, self.settings, safety_net=receiver is not None
        )
        self._transport = transport
        self._state = ClientState.OPENED
        return transport

    async def aclose(self) -> None:
        """Stop everything this client started; idempotent. Waiting callers get ClientClosed."""
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.CLOSED
        self._transport = None
        for pending in self._registry.all():
            name = pending.task_id or "a submission"
            self._registry.fail(pending, ClientClosed(f"client closed while {name} was pending"))
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._poller is not None:
            await self._poller.aclose()
        if self._receiver is not None:
            self._receiver.detach(self._registry)
            if self._owns_receiver:
                await self._receiver.aclose()
        if self._owns_session and self._session is not None:
            await self._session.close()

    # --- the raw endpoints ----------------------------------------------------------------

    async def create_task(
        self, request: EditRequest, *, callback_url: str | URL | None = None
    ) -> str:
        """Send one createTask and return the task id (no tracking, no slot)."""
        transport = await self._open()
        url = URL(callback_url) if isinstance(callback_url, str) else callback_url
        return await transport.create_task(request, url)

    async def get_task(self, task_id: str) -> TaskRecord:
        """Return a task's current record (recordInfo)."""
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequest("task_id", "must be a non-empty string")
        transport = await self._open()
        return await transport.get_record(task_id)

    async def credits(self) -> float:
        """Return the account's credit balance."""
        transport = await self._open()
        return await transport.credits()

    # --- awaiting edits ---------------------------------------------------------------------

    async def edit(
        self,
        request: EditRequest | None = None,
        /,
        *,
        prompt: str | None = None,
        image_urls: Sequence[str | URL] | None = None,
        aspect_ratio: AspectRatio | str = AspectRatio.SQUARE,
        quality: Quality | str = Quality.BASIC,
        nsfw_checker: bool | None = None,
    ) -> EditResult:
        """Submit one edit and wait for its result."""
        if request is None:
            if prompt is None or image_urls is None:
                raise InvalidRequest("request", "pass an EditRequest or prompt and image_urls")
            request = EditRequest(
                prompt=prompt,
                image_urls=image_urls,
                aspect_ratio=aspect_ratio,
                quality=quality,
                nsfw_checker=nsfw_checker,
            )
        elif prompt is not None or image_urls is not None:
            raise InvalidRequest("request", "pass an EditRequest or its fields, not both")
        handle = await self.submit(request)
        return await handle.result()

    async def submit(self, request: EditRequest) -> TaskHandle:
        """Submit one edit; return once the service accepted it."""
        return await self.submit_tracked(request)

    async def submit_tracked(
        self,
        request: EditRequest,
        *,
        token: str | None = None,
        on_accepted: OnAccepted | None = None,
        on_sent: Callable[[], object] | None = None,
    ) -> TaskHandle:
        """
        ``submit`` for batch runners: ``token`` fixes the callback token (journal it first),
        ``on_sent`` runs just before createTask goes out, and ``on_accepted`` runs once the
        task id is known, even if the caller was cancelled meanwhile.
        """
        if not isinstance(request, EditRequest):
            raise InvalidRequest("request", f"must be an EditRequest, got {type(request).__name__}")
        _check_token(token)
        transport = await self._open()
        await self._slots.acquire()
        self._in_flight += 1
        pending = self._track(request, token=token or self.new_token(), holds_slot=True)
        callback_url = None if pending.token is None else self._callback_url(pending.token)

        def mark_sent() -> None:
            pending.sent = True
            if on_sent is not None:
                on_sent()

        create = asyncio.ensure_future(transport.create_task(request, callback_url, mark_sent))
        try:
            task_id = await asyncio.shield(create)
        except asyncio.CancelledError:
            if pending.sent:  # it may exist: keep tracking it in the background
                create.add_done_callback(lambda f: self._settle(pending, f, on_accepted))
            else:
                create.cancel()
                self._registry.drop(pending)
            raise
        except SubmissionUnknown as e:
            return await self._await_unknown(pending, e, on_accepted)
        except BaseException:
            self._registry.drop(pending)
            raise
        self._accepted(pending, task_id, on_accepted)
        return TaskHandle(self, pending)

    def resume(
        self,
        task_id: str,
        *,
        request: EditRequest | None = None,
        token: str | None = None,
    ) -> TaskHandle:
        """Attach to a task submitted earlier, even by another process; call in the loop."""
        if self._state is ClientState.CLOSED:
            raise ClientClosed("this client is closed; make a new one")
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequest("task_id", "must be a non-empty string")
        _check_token(token)
        if (known := self._registry.get_task(task_id)) is not None:
            return TaskHandle(self, known)
        pending = self._track(request, token=token, task_id=task_id)
        self._spawn(self._watch_resumed(pending))
        return TaskHandle(self, pending)

    async def _watch_resumed(self, pending: Pending) -> None:
        try:
            await self._open()
        except ClientClosed as e:
            self._registry.fail(pending, e)
            return
        assert self._poller is not None
        self._poller.watch(pending, poll_now=True)

    async def reconcile(self, token: str | None, request: EditRequest) -> TaskHandle:
        """
        Learn what became of a submission whose createTask answer never came (say, in a run
        that was killed): wait until its deadline for the callback on its ``token``. Raises
        ``SubmissionUnknown`` when nothing can tell; never submits anything.
        """
        await self._open()
        unknown = SubmissionUnknown(
            "createTask was sent in an earlier run and its answer never came", request=request
        )
        _check_token(token)
        if token is None or self._receiver is None:
            raise unknown
        if (known := self._registry.get_token(token)) is not None:
            await asyncio.shield(known.future)
            return TaskHandle(self, known)
        pending = self._track(request, token=token)
        return await self._await_unknown(pending, unknown, None)

    # --- batches ------------------------------------------------------------------------------

    async def edit_many(
        self,
        requests: Iterable[EditRequest] | AsyncIterable[EditRequest],
        *,
        journal: str | Path | None = None,
        ordered: bool = False,
        download_to: str | Path | None = None,
        progress: BatchProgress | None = None,
    ) -> AsyncIterator[BatchItem]:
        """
        Edit every request, yielding one ``BatchItem`` per input as tasks end.

        ``requests`` is consumed lazily (memory follows ``max_in_flight``). ``journal`` (a
        SQLite file) makes a rerun skip finished inputs and never pay twice; ``ordered``
        yields in input order; ``download_to`` saves each result's images as soon as it ends;
        ``progress`` is updated live.
        """
        await self._open()
        opened = Journal(journal) if journal is not None else None
        runner = BatchRunner(
            self,
            journal=opened,
            download_to=Path(download_to) if download_to is not None else None,
            progress=progress or BatchProgress(),
        )
        async for item in runner.run(requests, ordered=ordered):
            yield item

    async def download(self, result: EditResult, directory: str | Path) -> list[Path]:
        """Save a result's images in ``directory`` as ``{task_id}_{n}{suffix}``."""
        downloader = await self.downloader()
        return await downloader.fetch_all(result.urls, Path(directory), result.task_id)

    @property
    def max_batch_window(self) -> int:
        """How many inputs a batch keeps in progress at once."""
        return self.settings.max_in_flight

    def new_token(self) -> str | None:
        """Return a fresh callback token, or None when polling."""
        return secrets.token_urlsafe(18) if self._receiver is not None else None

    async def downloader(self) -> Downloader:
        """The client's downloader of result images (on its session)."""
        await self._open()
        if self._downloader is None:
            assert self._session is not None
            self._downloader = Downloader(self._session, self.settings)
        return self._downloader

    def adopt(self, task: asyncio.Task[object]) -> None:
        """Keep a background task alive until it ends or the client closes."""
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- internals --------------------------------------------------------------------------

    def _callback_url(self, token: str) -> URL:
        assert self._receiver is not None
        return self._receiver.url_for(token)

    def _track(
        self,
        request: EditRequest | None,
        *,
        token: str | None = None,
        task_id: str | None = None,
        holds_slot: bool = False,
    ) -> Pending:
        """Register a task to await, by callback token (when called back) and/or task id."""
        if self._receiver is None:
            token = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = Pending(
            loop.create_future(),
            token=token,
            task_id=task_id,
            request=request,
            created=now,
            deadline=now + self.settings.task_deadline,
            holds_slot=holds_slot,
        )
        self._registry.add(pending)
        return pending

    def _resolved(self, pending: Pending) -> None:
        if pending.holds_slot:
            self._in_flight -= 1
            self._slots.release()
        if self._poller is not None:
            self._poller.discard()

    def _accepted(self, pending: Pending, task_id: str, on_accepted: OnAccepted | None) -> None:
        self._registry.bind(pending, task_id)
        if on_accepted is not None:
            on_accepted(pending)
        if not pending.done and self._poller is not None:
            self._poller.watch(pending)

    def _settle(
        self, pending: Pending, create: asyncio.Future[str], on_accepted: OnAccepted | None
    ) -> None:
        """Finish a submission whose caller was cancelled after createTask went out."""
        if create.cancelled():
            self._registry.drop(pending)
        elif isinstance(error := create.exception(), SubmissionUnknown):
            self._watch_unknown(pending, error)
        elif error is not None:
            self._registry.drop(pending)
        else:
            self._accepted(pending, create.result(), on_accepted)

    def _watch_unknown(self, pending: Pending, error: SubmissionUnknown) -> bool:
        """Keep a lost-answer submission's token live until its deadline; False if polling."""
        if self._receiver is None or self._poller is None:
            self._registry.drop(pending)
            return False
        pending.unknown = error
        self._poller.watch(pending)
        return True

    async def _await_unknown(
        self, pending: Pending, error: SubmissionUnknown, on_accepted: OnAccepted | None
    ) -> TaskHandle:
        """Wait for a callback to prove the task exists; raise ``error`` at the deadline."""
        if not self._watch_unknown(pending, error):
            raise error
        log.warning("createTask answer lost; waiting for the callback to tell: %s", error)
        await asyncio.shield(pending.future)  # the deadline raises ``error``
        if on_accepted is not None:
            on_accepted(pending)
        return TaskHandle(self, pending)

    def _confirm(self, pending: Pending, record: TaskRecord) -> None:
        """Check a callback's claim with recordInfo before trusting its URLs."""
        self._spawn(self._confirm_with_record(pending, record.task_id))

    def _spawn(self, work: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _confirm_with_record(self, pending: Pending, task_id: str) -> None:
        try:
            record = await self.get_task(task_id)
        except (ApiError, ClientClosed) as e:
            log.info("could not confirm a callback for %s (%s); polling will", task_id, e)
            return
        if record.is_final:
            self._registry.finish(pending, record)
