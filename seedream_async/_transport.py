"""
The aiohttp edge: one HTTP exchange per attempt, error mapping, retries, shared limiters.

The retry policy never pays twice: createTask is retried only when the service provably did
not take it (a 429, or a connection that never opened); anything that may have reached the
service (a timeout, a reset after sending, a 5xx, a 200 without a task id) raises
``SubmissionUnknown`` unless ``Settings.resubmit_unknown`` is set. Reads are idempotent and
retried on 429, 5xx, timeouts and connection errors.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from yarl import URL

from ._account import Account
from ._config import Settings
from ._errors import (
    ApiError,
    ClientClosed,
    RateLimited,
    ServerError,
    ServiceUnavailable,
    ServiceUnreachable,
    SubmissionUnknown,
)
from ._limits import Limiter, SlidingWindowLimiter
from ._models import TaskRecord, TaskRequest
from ._telemetry import RateLimitHit, Telemetry
from ._wire import (
    MalformedPayload,
    create_task_body,
    parse_credits,
    parse_record,
    parse_retry_after,
    parse_task_id,
    read_envelope,
)

log = logging.getLogger("seedream_async")

CREATE_PATH = "api/v1/jobs/createTask"
RECORD_PATH = "api/v1/jobs/recordInfo"
CREDIT_PATH = "api/v1/chat/credit"

_Answer = tuple[int, bytes, float | None]
#: Runs just before a createTask goes out; a future it returns is awaited first (say, the
#: journal's commit of the row for it); anything else it returns is ignored.
OnSend = Callable[[], object]


class Sending(Protocol):
    """A createTask's hooks: called (as ``OnSend``) just before each attempt goes out, and
    ``unsent`` when an attempt provably made no task (a 429, a connection that never
    opened), before it waits to try again."""

    def __call__(self) -> object: ...

    def unsent(self) -> None: ...


class AnswerTooLarge(aiohttp.ClientPayloadError):
    """An answer body over ``Settings.max_answer_bytes`` (after decompression)."""


def backoff_delay(settings: Settings, attempt: int) -> float:
    """Capped exponential backoff with jitter (between half and all of the step)."""
    step: float = min(settings.backoff_max, settings.backoff_initial * 2.0**attempt)
    return step / 2 + random.uniform(0, step / 2)


class Transport:
    """Speaks HTTP to the service for one client: createTask, recordInfo, credit."""

    __slots__ = (
        "_cap",
        "_closed",
        "_create_url",
        "_credit_url",
        "_headers",
        "_json_headers",
        "_record_url",
        "_session",
        "_timeout",
        "_traced",
        "account",
        "create_limiter",
        "query_limiter",
        "settings",
        "telemetry",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: URL,
        api_key: str,
        settings: Settings,
        *,
        limiters: tuple[Limiter, Limiter] | None = None,
        telemetry: Telemetry | None = None,
        account: Account | None = None,
    ) -> None:
        self._session = session
        #: The account's conditions: every answer is judged there, every createTask gated.
        self.account = account or Account(settings)
        self.telemetry = telemetry or Telemetry()
        self.settings = settings
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "User-Agent": settings.user_agent,
            "Accept": "application/json",
        }
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self._create_url = base_url / CREATE_PATH
        self._record_url = base_url / RECORD_PATH
        self._credit_url = base_url / CREDIT_PATH
        self._timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout, connect=settings.connect_timeout
        )
        #: createTask's and recordInfo's limits: this process's own, or a fleet's (shared).
        self.create_limiter, self.query_limiter = limiters or (
            SlidingWindowLimiter(settings.create_rate, settings.create_period),
            SlidingWindowLimiter(settings.query_rate, settings.query_period),
        )
        self._closed = False
        self._cap = settings.max_answer_bytes
        self._traced = bool(session.trace_configs)  # aiohttp's tracing sees every read

    def close(self) -> None:
        """Send nothing more: queued and future requests raise ``ClientClosed``."""
        self._closed = True
        self.create_limiter.close()
        self.query_limiter.close()

    async def create_task(
        self,
        request: TaskRequest,
        callback_url: URL | str | None,
        on_send: Sending | None = None,
        *,
        patient: bool = True,
    ) -> str:
        """Submit one task and return its id; never resubmit one that may exist.

        ``patient``: wait out a maintenance or an outage (else raise its error at once)."""
        body = create_task_body(request, callback_url)
        account = self.account
        refused = 0
        attempt = 0
        while True:
            if account.hold is not None:
                await account.admit(patient=patient)  # waits out a pause, or raises: unsent
            try:
                status, raw, retry_after = await self._exchange(
                    self.create_limiter, "POST", self._create_url, body, on_send, account=account
                )
            except _Held:
                continue  # a condition came while it waited for its turn: nothing went out
            except NEVER_SENT as e:
                # No connection was had (refused, or none free in time): nothing was sent,
                # so trying again cannot pay twice.
                account.failed(e)
                refused = self._count_unsent(e, attempt, refused)
                attempt += 1
                _made_no_task(on_send)
                await asyncio.sleep(backoff_delay(self.settings, attempt - 1))
                continue
            except (aiohttp.ClientError, TimeoutError) as e:
                account.failed(e)
                unknown = SubmissionUnknown(
                    f"{type(e).__name__} after sending",
                    request=request,
                    callback_url=as_url(callback_url),
                )
                attempt += 1
                if self._resubmit(attempt - 1):
                    log.warning("createTask answer lost (%s); resubmitting as opted in", e)
                    continue
                raise unknown from e
            attempt += 1
            task_id = self._judge_create(
                status,
                raw,
                retry_after,
                request,
                callback_url,
                on_send=on_send,
                attempt=attempt,
                patient=patient,
            )
            if task_id is not None:
                return task_id

    def _judge_create(
        self,
        status: int,
        raw: bytes,
        retry_after: float | None,
        request: TaskRequest,
        callback_url: URL | str | None,
        *,
        on_send: Sending | None,
        attempt: int,
        patient: bool,
    ) -> str | None:
        """A createTask answer: the task id, None to try again, or the error to raise."""
        account = self.account
        try:
            task_id = parse_task_id(
                read_envelope(status, raw, endpoint="createTask", retry_after=retry_after)
            )
        except RateLimited as e:
            self._pause(self.create_limiter, e, attempt - 1)  # every caller, even the last
            if attempt == self.settings.create_attempts:
                raise
            _made_no_task(on_send)  # before it waits out the 429
            return None
        except ServerError as e:
            account.observe(e)
            if not _may_have_run(e):
                raise
            if not self._resubmit(attempt - 1):
                raise SubmissionUnknown(
                    f"server error: {e.message}",
                    request=request,
                    callback_url=as_url(callback_url),
                ) from e
            return None
        except ApiError as e:
            account.observe(e)  # 401, 402, 433, 455 hold every createTask back
            if patient and isinstance(e, ServiceUnavailable):
                return None  # not taken: sent again once the pause is over (or too long)
            raise
        except MalformedPayload as e:
            raise SubmissionUnknown(
                str(e), request=request, callback_url=as_url(callback_url)
            ) from e
        if account.failures:
            account.answered()
        return task_id

    async def get_record(self, task_id: str) -> TaskRecord:
        """Return a task's record (recordInfo), retrying what is safe to retry."""
        data = await self._read(self._record_url.with_query(taskId=task_id), "recordInfo")
        try:
            return parse_record(data)
        except MalformedPayload as e:
            raise ServerError(str(e), code=None, http_status=200, endpoint="recordInfo") from e

    async def credits(self) -> float:
        """Return the account's credit balance."""
        data = await self._read(self._credit_url, "credit")
        try:
            return parse_credits(data)
        except MalformedPayload as e:
            raise ServerError(str(e), code=None, http_status=200, endpoint="credit") from e

    async def _read(self, url: URL, endpoint: str) -> Any:
        attempts = self.settings.query_attempts
        refused = 0
        account = self.account
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                status, raw, retry_after = await self._exchange(
                    self.query_limiter, "GET", url, None
                )
                data = read_envelope(status, raw, endpoint=endpoint, retry_after=retry_after)
            except aiohttp.ClientConnectorError as e:
                account.failed(e)
                refused += 1
                if last or refused == self.settings.connect_attempts:
                    raise unreachable(e, url, endpoint) from None
            except (aiohttp.ClientError, TimeoutError) as e:
                account.failed(e)
                if last:
                    raise _network_error(e, endpoint) from e
            except RateLimited as e:
                self._pause(self.query_limiter, e, attempt)
                if last:
                    raise
                continue
            except ServerError as e:
                account.observe(e)
                if last:
                    raise
            except ApiError as e:
                account.observe(e)
                raise
            else:
                if account.failures:
                    account.answered()
                return data
            await asyncio.sleep(backoff_delay(self.settings, attempt))
        raise AssertionError("unreachable: the last attempt raises or returns")

    async def _exchange(
        self,
        limiter: Limiter,
        method: str,
        url: URL,
        body: bytes | None,
        on_send: OnSend | None = None,
        *,
        account: Account | None = None,
    ) -> _Answer:
        """One HTTP exchange inside one limiter grant, stamped when the answer is in."""
        grant = None if limiter.take() else await limiter.acquire()
        sent = False
        try:
            # Checked again at the moment of sending: a close while queued sends nothing.
            if self._closed:
                raise ClientClosed("the client was closed before this request went out")
            if account is not None and account.hold is not None:
                raise _Held  # (its grant is refunded below)
            if on_send is not None and isinstance(durable := on_send(), asyncio.Future):
                await durable  # say, the journal's row for it committed
            headers = self._headers if body is None else self._json_headers
            sent = True
            async with self._session.request(
                method, url, data=body, headers=headers, timeout=self._timeout
            ) as resp:
                length = resp.content_length
                if (
                    length is not None
                    and length <= self._cap
                    and "Content-Encoding" not in resp.headers
                ):
                    # Exactly ``length`` bytes: the common case. Already all here (nothing to
                    # wait for): taken as is, unless the session traces its body chunks.
                    content = resp.content
                    if content.is_eof() and not self._traced:
                        raw = content.read_nowait()
                    else:
                        raw = await resp.read()
                else:
                    raw = await self._read_capped(resp)
                return resp.status, raw, parse_retry_after(resp.headers.get("Retry-After"))
        except NEVER_SENT:
            sent = False  # no connection was had: the service counted nothing
            raise
        finally:
            limiter.release(grant, sent=sent)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        """Read an answer, refusing more than ``max_answer_bytes`` (a gzip bomb included)."""
        cap = self._cap
        length = resp.content_length
        if length is not None and length > cap:
            raise AnswerTooLarge(f"answer of {length} bytes, over {cap}")
        body = bytearray()
        async for chunk in resp.content.iter_any():
            body += chunk
            if len(body) > cap:
                raise AnswerTooLarge(f"answer over {cap} bytes")
        return bytes(body)

    def _pause(self, limiter: Limiter, e: RateLimited, attempt: int) -> None:
        delay = e.retry_after
        if delay is None:
            delay = backoff_delay(self.settings, attempt)
        if self.telemetry.active:  # logged at INFO too, as seedream_async.tasks
            self.telemetry.emit(RateLimitHit(endpoint=e.endpoint or "?", pause=delay))
        limiter.pause_until(asyncio.get_running_loop().time() + delay)

    def _count_unsent(self, e: Exception, attempt: int, refused: int) -> int:
        """Count a createTask that had no connection; raise once retrying is pointless."""
        last = attempt + 1 == self.settings.create_attempts
        if isinstance(e, aiohttp.ClientConnectorError):
            refused += 1
            if last or refused == self.settings.connect_attempts:
                raise unreachable(e, self._create_url, "createTask") from None
        elif last:
            raise _network_error(e, "createTask") from e
        return refused

    def _resubmit(self, attempt: int) -> bool:
        return self.settings.resubmit_unknown and attempt + 1 < self.settings.create_attempts


class _Held(Exception):
    """An account condition came while a createTask waited for its turn: not sent."""


def _made_no_task(on_send: Sending | None) -> None:
    """Tell the submitter an attempt made no task, before it waits to try again."""
    if on_send is not None:
        on_send.unsent()


def _may_have_run(e: ApiError) -> bool:
    """A 5xx may come after the service made the task; a proxy's 403 page may not."""
    status = e.code if e.code is not None else e.http_status
    return status is not None and status >= 500


#: Failures before a request had a connection: a connection that could not be opened, and no
#: connection (new, or free in the pool) within ``connect_timeout``. Nothing was sent.
NEVER_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)


def unreachable(e: aiohttp.ClientConnectorError, url: URL, endpoint: str) -> ServiceUnreachable:
    """One line that says where and why, with no chained traceback: the reason is all of it
    (aiohttp's frames and the OS error's would fill a service's log for a wrong base URL)."""
    reason = e.os_error
    if isinstance(reason, ConnectionRefusedError):
        text = "connection refused (is anything listening there?)"
    else:
        text = reason.strerror or str(reason) or type(reason).__name__
    return ServiceUnreachable(url.with_query(None), text, endpoint=endpoint)


def _network_error(e: BaseException, endpoint: str) -> ServerError:
    return ServerError(f"network failure: {type(e).__name__}: {e}", code=None, endpoint=endpoint)


def as_url(url: URL | str | None) -> URL | None:
    """A callback URL as errors carry it (built only when one is raised)."""
    return URL(url, encoded=True) if isinstance(url, str) else url
