"""``SeedreamClient``, the public facade: tasks live in ``_lifecycle``, run in ``_tracker``."""

from __future__ import annotations

import asyncio
import enum
import os
import warnings
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Sequence
from pathlib import Path
from types import TracebackType

import aiohttp
import attrs
from yarl import URL

from ._batch import BatchItem, BatchProgress, BatchRunner
from ._catalog import DEFAULT_TEXT_MODEL, is_request, spec_for
from ._config import Settings, resolve_api_key, resolve_base_url
from ._coordination import AccountBound, Coordinator, LocalCoordinator
from ._errors import ClientAlreadyOpen, ClientClosed, InvalidRequest, ReceiverError, SeedreamError
from ._handle import TaskHandle
from ._journal import Journal
from ._models import (
    AspectRatio,
    EditRequest,
    EditResult,
    LocalImage,
    Quality,
    TaskRecord,
    TaskRequest,
    request_from,
)
from ._receiver import CallbackReceiver
from ._telemetry import Hook, Telemetry
from ._tracker import Tracker, check_token, outcome
from ._transport import Transport
from ._uploads import Uploader


class ClientState(enum.Enum):
    """A client is used once: opened on first use, never reopened after close."""

    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class SeedreamClient:
    """
    An asyncio client for Seedream 4.5 Edit and every other model of the jobs API; share one
    per process.

    ``api_key`` falls back to ``$APIKLEY_API_KEY`` and ``base_url`` to ``$APIKLEY_BASE_URL``.
    A ``session`` you pass is used and never closed; one the client makes is closed by
    ``aclose()``. With ``callbacks=CallbackReceiver(...)`` tasks are resolved by the
    service's callbacks (polling is the safety net); without, by polling. With
    ``coordinator=RedisCoordinator(...)`` every client of one Redis namespace shares the
    account's limits, callbacks and results. ``hooks`` receive a typed event for every
    step of every edit (``TelemetryEvent``); ``OpenTelemetryHook`` is one.
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
        coordinator: Coordinator | None = None,
        hooks: Iterable[Hook] = (),
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
        self._entered = False
        self._coordinator_started = False
        self._start_lock = asyncio.Lock()
        self._coordinator: Coordinator = coordinator or LocalCoordinator()
        self._tracker = Tracker(settings, callbacks, self._coordinator, Telemetry(hooks))

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
        return self._tracker.lifecycle.in_flight

    # --- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> SeedreamClient:
        if self._entered:
            raise ClientAlreadyOpen(
                "this client is already open in an 'async with'; share that one"
                " (a nested 'async with' would close it under the first)"
            )
        await self._open()
        self._entered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._entered = False
        await self.aclose()

    async def _open(self) -> Transport:
        if (transport := self._tracker.transport) is not None and self._state is ClientState.OPENED:
            return transport
        async with self._start_lock:
            if self._state is ClientState.CLOSED:
                raise ClientClosed("this client is closed; make a new one")
            if self._tracker.transport is None:
                await self._start()
            assert self._tracker.transport is not None
            return self._tracker.transport

    async def _start(self) -> None:
        """All or nothing: a receiver that cannot start leaves nothing open behind it."""
        session = self._session or aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.settings.connection_limit)
        )
        receiver = self._receiver
        try:
            if receiver is not None and not receiver.running and receiver.needs_server:
                try:
                    await receiver.start()
                except OSError as e:
                    raise ReceiverError(f"the callback receiver could not start: {e}") from e
                self._owns_receiver = True
            if isinstance(self._coordinator, AccountBound):
                self._coordinator.use_api_key(self._api_key)
            await self._coordinator.start(self._tracker.lifecycle)
            self._coordinator_started = True
            limiters = self._coordinator.limiters(self.settings)
            transport = Transport(
                session,
                self.base_url,
                self._api_key,
                self.settings,
                limiters=limiters,
                telemetry=self._tracker.telemetry,
                account=self._tracker.account,
            )
            uploader = Uploader(session, self.base_url, self._api_key, self.settings)
            self._tracker.start(transport, session, uploader)
        except BaseException:
            await self._close_coordinator()
            if self._owns_receiver and receiver is not None:
                self._owns_receiver = False
                await receiver.aclose()
            if self._owns_session:
                await session.close()
            raise
        self._session = session
        self._state = ClientState.OPENED

    async def aclose(self) -> None:
        """Stop everything this client started; final and idempotent. Waiters get ClientClosed."""
        if self._state is ClientState.CLOSED:
            return
        self._state = ClientState.CLOSED
        self._tracker.close()  # at once: nothing queued goes out from here on
        async with self._start_lock:  # a start under way finishes first, then is undone
            await self._tracker.aclose()
            await self._close_coordinator()
            if self._owns_receiver and self._receiver is not None:
                await self._receiver.aclose()
            if self._owns_session and self._session is not None:
                await self._session.close()

    async def _close_coordinator(self) -> None:
        """Close the coordinator only if this client started it: one that refused to start
        (it serves another client) belongs to that client."""
        if self._coordinator_started:
            self._coordinator_started = False
            await self._coordinator.aclose()

    # --- the raw endpoints ----------------------------------------------------------------

    async def create_task(
        self, request: TaskRequest, *, callback_url: str | URL | None = None
    ) -> str:
        """Send one createTask and return the task id (no tracking, no slot)."""
        transport = await self._open()
        url = URL(callback_url) if isinstance(callback_url, str) else callback_url
        assert self._tracker.uploader is not None
        sendable = await self._tracker.uploader.resolve(request)
        return await transport.create_task(sendable, url, patient=False)

    async def upload(
        self, file: str | os.PathLike[str] | bytes, *, file_name: str | None = None
    ) -> URL:
        """
        Upload an image (a path, or its bytes) and return a URL ``image_urls`` can take.

        A file is checked first (a JPEG, PNG or WebP of at most 10 MB), streamed, and
        uploaded once per content: the same bytes again return the same URL (for 20 h).
        """
        await self._open()
        uploader = self._tracker.uploader
        assert uploader is not None
        if isinstance(file, bytes | bytearray | memoryview):
            return await uploader.upload_bytes(bytes(file), file_name)
        return await uploader.upload_image(LocalImage.open(file), file_name)

    async def get_task(self, task_id: str) -> TaskRecord:
        """Return a task's current record (recordInfo)."""
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequest("task_id", "must be a non-empty string")
        return await (await self._open()).get_record(task_id)

    async def credits(self) -> float:
        """Return the account's credit balance."""
        return await (await self._open()).credits()

    # --- awaiting edits ---------------------------------------------------------------------

    async def edit(
        self,
        request: TaskRequest | None = None,
        /,
        *,
        prompt: str | None = None,
        image_urls: Sequence[str | URL | os.PathLike[str]] | None = None,
        aspect_ratio: AspectRatio | str = AspectRatio.SQUARE,
        quality: Quality | str = Quality.BASIC,
        nsfw_checker: bool | None = None,
    ) -> EditResult:
        """Submit one edit and wait for its result (bound the whole wait with asyncio.timeout)."""
        request = request_from(
            request,
            prompt=prompt,
            image_urls=image_urls,
            aspect_ratio=aspect_ratio,
            quality=quality,
            nsfw_checker=nsfw_checker,
        )
        # ``submit`` then ``result()``, inline: no handle, and no coroutine for either (every
        # edit runs this; a parked edit keeps one frame instead of three).
        if type(request) is not EditRequest and not is_request(request):
            raise InvalidRequest("request", f"must be a request, got {type(request).__name__}")
        if self._state is not ClientState.OPENED:
            await self._open()
        task = await self._tracker.submit(request)
        return outcome(await task.wait(), request)

    async def generate(
        self,
        request: TaskRequest | None = None,
        /,
        *,
        prompt: str | None = None,
        model: str = DEFAULT_TEXT_MODEL,
        aspect_ratio: AspectRatio | str | None = None,
        quality: Quality | str | None = None,
    ) -> EditResult:
        """
        Make images from a prompt and wait for them (Seedream 4.5 text to image by default).

        ``model`` is any typed text-to-image model (``seedream-async models`` lists them);
        ``aspect_ratio`` and ``quality`` go to the models that have them. For the other fields
        of a model, pass its request (say ``SeedreamV4Request(...)``) instead.
        """
        if request is None:
            request = text_request(model, prompt, aspect_ratio=aspect_ratio, quality=quality)
        elif prompt is not None:
            raise InvalidRequest("request", "pass a request or a prompt, not both")
        return await self.edit(request)

    async def submit(self, request: TaskRequest) -> TaskHandle:
        """Submit one request (any model); return once the service accepted it."""
        if type(request) is not EditRequest and not is_request(request):
            raise InvalidRequest("request", f"must be a request, got {type(request).__name__}")
        if self._state is not ClientState.OPENED:
            await self._open()
        return TaskHandle(self, await self._tracker.submit(request))

    def resume(
        self, task_id: str, *, request: TaskRequest | None = None, token: str | None = None
    ) -> TaskHandle:
        """Attach to a task submitted earlier, even by another process; call in the loop."""
        if self._state is ClientState.CLOSED:
            raise ClientClosed("this client is closed; make a new one")
        if not isinstance(task_id, str) or not task_id.strip():
            raise InvalidRequest("task_id", "must be a non-empty string")
        check_token(token)
        task = self._tracker.resume(task_id, request, token)
        if self._state is ClientState.UNOPENED:
            self._tracker.spawn(self._open_for_resume(), name="seedream-open")
        return TaskHandle(self, task)

    async def _open_for_resume(self) -> None:
        try:
            await self._open()
        except (SeedreamError, OSError, aiohttp.ClientError) as e:
            self._tracker.lifecycle.fail_all(e)  # a resumed task must not wait for nothing

    async def reconcile(self, token: str | None, request: TaskRequest) -> TaskHandle:
        """
        Learn what became of a submission whose createTask answer never came (say, in a run
        that was killed): wait until its deadline for the callback on its ``token``. Raises
        ``SubmissionUnknown`` when nothing can tell; never submits anything.
        """
        check_token(token)
        await self._open()
        return TaskHandle(self, await self._tracker.reconcile(token, request))

    # --- batches ------------------------------------------------------------------------------

    async def edit_many(
        self,
        requests: Iterable[TaskRequest] | AsyncIterable[TaskRequest],
        *,
        journal: str | Path | None = None,
        ordered: bool = False,
        download_to: str | Path | None = None,
        progress: BatchProgress | None = None,
        retry_failed: bool = False,
    ) -> AsyncIterator[BatchItem]:
        """
        Edit every request, yielding one ``BatchItem`` per input as tasks end.

        ``requests`` is consumed lazily (memory follows ``max_in_flight``). ``journal`` (a
        SQLite file, held by one run at a time) makes a rerun skip finished inputs and never
        pay twice; ``ordered`` yields in input order; ``download_to`` saves each result's
        images as soon as it ends; ``progress`` is updated live. ``retry_failed`` submits
        again the inputs the journal says failed (never those accepted or unknown).
        """
        if retry_failed and journal is None:
            raise InvalidRequest("retry_failed", "needs a journal to know which inputs failed")
        await self._open()
        runner = BatchRunner(
            self._tracker,
            # The runner closes it once no item can write (adopted ones run past a break).
            journal=Journal(journal) if journal is not None else None,
            download_to=Path(download_to) if download_to is not None else None,
            progress=progress or BatchProgress(),
            retry_failed=retry_failed,
        )
        async for item in runner.run(requests, ordered=ordered):
            yield item

    async def download(self, result: EditResult, directory: str | Path) -> list[Path]:
        """Save a result's images in ``directory`` as ``{task_id}_{n}{suffix}``."""
        await self._open()
        assert self._tracker.downloader is not None
        return await self._tracker.downloader.fetch_all(
            result.urls, Path(directory), result.task_id, owner=result.task_id
        )


def text_request(
    model: str,
    prompt: str | None,
    *,
    aspect_ratio: AspectRatio | str | None,
    quality: Quality | str | None,
) -> TaskRequest:
    """The text-to-image request ``generate()`` means."""
    spec = spec_for(model)
    if spec.kind != "text to image":
        raise InvalidRequest("model", f"{model!r} is an edit model: use edit() or submit()")
    if prompt is None:
        raise InvalidRequest("prompt", "is required")
    names = {f.name for f in spec.fields}
    fields: dict[str, object] = {"prompt": prompt}
    for name, value in (("aspect_ratio", aspect_ratio), ("quality", quality)):
        if value is None:
            continue
        if name not in names:
            raise InvalidRequest(name, f"is not a field of {model}")
        fields[name] = value
    return spec.request(**fields)
