"""
A faithful fake of the Apikley jobs API for Seedream 4.5 Edit, as an aiohttp application.

For this project's tests and benchmarks and for users' own tests. It shares only the wire
format with the client (``_wire``, ``_models``, ``_signing``), never the client code it is
there to test. Every fault knob in ``SimulatorConfig`` is off by default; ``SimulatorStats``
counts what clients did, so a test can prove that nothing was paid twice.

Serve it alone with ``python -m seedream_async.simulator --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import itertools
import json
import logging
import random
import signal
import struct
import sys
import time
import zlib
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp
import attrs
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.multipart import BadContentDispositionHeader, BadContentDispositionParam
from yarl import URL

from ._catalog import MODELS
from ._errors import InvalidRequest
from ._models import TaskRecord, TaskRequest, TaskState
from ._signing import sign
from ._wire import MalformedPayload, envelope, parse_create_body, record_to_wire

__all__ = [
    "Simulator",
    "SimulatorConfig",
    "SimulatorStats",
    "add_arguments",
    "config_from",
    "fake_png",
    "serve",
    "stats_json",
]

log = logging.getLogger("seedream_async.simulator")

LostAnswer = Literal["reset", "http500", "hang"]


@attrs.define(kw_only=True)
class SimulatorConfig:
    """The simulator's knobs; change them at any time, even while it serves."""

    #: Seconds from create to the final state, drawn uniformly from this range.
    latency: tuple[float, float] = (0.0, 0.0)
    #: Fraction of tasks that end in ``fail``.
    failure_rate: float = 0.0
    #: createTask limit as (requests, seconds), sliding; excess gets HTTP 429.
    create_limit: tuple[int, float] | None = None
    #: recordInfo limit as (requests, seconds), sliding; excess gets HTTP 429.
    query_limit: tuple[int, float] | None = None
    #: Seconds to send in ``Retry-After`` with a 429 (None: no header, as documented).
    retry_after: float | None = None
    #: Every call answers body code 455.
    maintenance: bool = False
    #: A maintenance window by time: from this many seconds after the simulator started,
    #: for ``maintenance_for`` seconds, every call answers 455 (with ``Retry-After``).
    maintenance_after: float | None = None
    maintenance_for: float = 0.0
    #: The key is revoked once this many tasks were made: every call answers 401 after.
    revoke_key_after: int | None = None
    #: A sub-key's usage cap: createTask answers 433 once this many tasks were made.
    usage_cap: int | None = None
    #: A failed task is charged too (its record carries ``creditsConsumed``).
    charge_failures: bool = False
    #: Credits on the account (None: unlimited) and the price of one task.
    credits: float | None = None
    price: float = 1.25
    #: The price of one task (one image, for models that make several) by ``price_key``
    #: (``ModelSpec``); a model not named here costs ``price``. Relative to 4.5's price as
    #: the vendor's 2026-06 pricing page has them (5 Lite 0.0275 against 0.0325 a picture).
    prices: dict[str, float] = attrs.field(
        factory=lambda: {"seedream-5-lite": 1.05, "seedream-5-pro": 2.5, "seedream-v4": 1.0}
    )
    #: Fraction of calls answered by an HTML error page (a proxy), before any work.
    html_error_rate: float = 0.0
    #: The status of those pages: 502, 503, or 403 (Cloudflare's ``error code: 1010``).
    html_error_status: int = 502
    #: Refuse requests without a User-Agent with Cloudflare's HTML 403 ``error code: 1010``.
    require_user_agent: bool = True
    #: The only API key accepted (None: any non-empty key).
    api_key: str | None = None
    #: Fraction of createTask answers lost *after* the task was made, and how.
    lost_answer_rate: float = 0.0
    lost_answer_mode: LostAnswer = "reset"
    #: Seconds a fresh task is unknown to recordInfo, and the code it answers then.
    invisible_for: float = 0.0
    invisible_code: Literal[404, 422] = 422
    #: Deliver the callback (and wait for it) before answering createTask.
    callback_early: bool = False
    #: Seconds createTask takes to answer once the task is made (a slow answer: it exists).
    create_answer_delay: float = 0.0
    #: Extra deliveries of each callback.
    callback_duplicates: int = 0
    #: Fraction of callbacks never sent.
    callback_drop_rate: float = 0.0
    #: Seconds between the task ending and its callback.
    callback_delay: float = 0.0
    #: Send ``consumeCredits``/``remainedCredits`` instead of ``creditsConsumed``.
    callback_old_schema: bool = False
    #: Sign callbacks with this HMAC key.
    hmac_key: bytes | None = None
    #: Size in bytes of each result image served under ``/files``.
    image_size: int = 2048
    #: Images made per task.
    images_per_task: int = 1
    #: HTTP status of result file downloads (anything but 200 serves an error page).
    file_status: int = 200
    #: Result URLs to hand out instead of the simulator's own, as a template with
    #: ``{task_id}`` and ``{n}`` (say ``http://10.0.0.1/{task_id}.png``, to test a client).
    result_url_template: str | None = None
    #: Deliver callbacks for a public base URL to a local one, as a tunnel would: say
    #: ``{"https://hooks.example.com": "http://127.0.0.1:8081"}``.
    callback_tunnels: dict[str, str] = attrs.field(factory=dict)
    #: Rewrites each record just before it is sent (recordInfo and callbacks): hostile answers.
    tamper: Callable[[dict[str, Any]], object] | None = None
    #: Seconds an uploaded file is served before it expires (None: kept while serving).
    upload_ttl: float | None = None
    #: Largest upload accepted, in bytes (an edit input's limit).
    upload_max_bytes: int = 10 * 1024 * 1024
    #: Asked with the number of each upload request (1, 2, ...) once its body is read: True
    #: answers it an HTML 503, as an overloaded proxy would, so the client retries (a test
    #: may change the file here, between two attempts).
    upload_fault: Callable[[int], bool] | None = None
    #: Told the size of each chunk of an upload's file as it arrives: a test can act while
    #: an upload is on the wire.
    upload_chunk_hook: Callable[[int], object] | None = None
    #: Seconds after a task ends that the simulator forgets it (None: never), and with it
    #: its per-request and per-callback counts: long runs stay bounded in memory.
    task_ttl: float | None = None
    #: Keep uploaded bytes to serve them (off: count them only, for long benchmarks).
    keep_uploads: bool = True
    #: Seed of the simulator's randomness.
    seed: int | None = None


@attrs.define
class SimulatorStats:
    """What clients did to the simulator."""

    create_requests: int = 0
    #: createTasks refused by an account condition, by body code (401, 402, 433, 455).
    create_refused: Counter[int] = attrs.field(factory=Counter)
    tasks_created: int = 0
    rate_limited: int = 0
    polls: int = 0
    poll_times: list[float] = attrs.field(factory=list)
    callbacks_sent: int = 0
    callbacks_failed: int = 0
    downloads: int = 0
    #: Files uploaded (stream and base64), and their bytes.
    uploads: int = 0
    upload_bytes: int = 0
    #: Upload requests received, stored or not, and the file bytes they carried.
    upload_requests: int = 0
    upload_bytes_received: int = 0
    #: Tasks made per callback URL: more than one for a URL means a task was paid twice.
    tasks_per_callback: Counter[str] = attrs.field(factory=Counter)
    #: Tasks made per request fingerprint.
    tasks_per_request: Counter[str] = attrs.field(factory=Counter)

    def peak_poll_rate(self, window: float = 1.0) -> int:
        """Return the most recordInfo requests seen in any ``window`` seconds."""
        times = sorted(self.poll_times)
        best = start = 0
        for end, t in enumerate(times):
            while times[start] <= t - window:
                start += 1
            best = max(best, end - start + 1)
        return best


@attrs.define(eq=False)
class _Task:
    task_id: str
    request: TaskRequest
    callback_url: URL | None
    created: float
    latency: float
    fails: bool
    files_base: URL
    images: int
    price: float = 1.25


#: A body aiohttp cannot read (the disposition warnings are raised where warnings are errors).
_UNREADABLE = (
    web.RequestPayloadError,
    HttpProcessingError,
    BadContentDispositionHeader,
    BadContentDispositionParam,
)
_HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
_HTML_1010 = b"error code: 1010"


class _Window:
    """Sliding-window counter for the simulator's own rate limits."""

    def __init__(self) -> None:
        self.times: deque[float] = deque()

    def admit(self, limit: tuple[int, float] | None, now: float) -> bool:
        if limit is None:
            return True
        rate, period = limit
        while self.times and self.times[0] <= now - period:
            self.times.popleft()
        if len(self.times) >= rate:
            return False
        self.times.append(now)
        return True


class Simulator:
    """The fake service; ``async with Simulator() as sim`` serves it on 127.0.0.1:0."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.stats = SimulatorStats()
        self.tasks: dict[str, _Task] = {}
        #: (forget at, task id) in creation order, while ``task_ttl`` is set.
        self._expiry: deque[tuple[float, str]] = deque()
        #: Uploaded files: "folder/name" -> (bytes, monotonic time of upload).
        self.uploaded: dict[str, tuple[bytes, float]] = {}
        # Bodies up to an upload's limit (and some for the form around it); checked below.
        self.app = web.Application(client_max_size=self.config.upload_max_bytes + (1 << 20))
        self.app.router.add_post("/api/v1/jobs/createTask", self._create)
        self.app.router.add_get("/api/v1/jobs/recordInfo", self._record_info)
        self.app.router.add_get("/api/v1/chat/credit", self._credit)
        self.app.router.add_get("/simulator/stats", self._stats)
        self.app.router.add_get("/files/{task_id}/{n}.png", self._file)
        self.app.router.add_post("/file-upload/api/file-stream-upload", self._stream_upload)
        self.app.router.add_post("/file-upload/api/file-base64-upload", self._base64_upload)
        self.app.router.add_get("/uploads/{folder}/{name}", self._uploaded_file)
        self.app.cleanup_ctx.append(self._callback_session)
        self._rng = random.Random(self.config.seed)
        self._ids = itertools.count(1)
        self._create_window = _Window()
        self._query_window = _Window()
        self._session: aiohttp.ClientSession | None = None
        self._background: set[asyncio.Future[None]] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._runner: web.AppRunner | None = None
        self.url = URL()
        #: Monotonic time it started serving (``maintenance_after`` counts from it).
        self.started = time.monotonic()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> URL:
        """Serve on ``host:port`` (0: any free port) and return the base URL."""
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=0.5,
            logger=_http_log,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.started = time.monotonic()
        bound = self._runner.addresses[0]
        self.url = URL.build(scheme="http", host=bound[0], port=bound[1])
        exposed = [a[0] for a in self._runner.addresses if not _loopback(a[0])]
        if exposed:
            # A log line, not warnings.warn: a deliberate bind (a container) must not fail
            # the user's test suite where warnings are errors.
            log.warning(
                "simulator listening on %s: reachable from other hosts, and it accepts any "
                "API key and serves its uploads to anyone who asks",
                ", ".join(exposed),
            )
        return self.url

    async def aclose(self) -> None:
        """Stop serving, cancel pending callbacks."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for fut in list(self._background):
            fut.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the task life -------------------------------------------------------------------

    def record(self, task_id: str) -> TaskRecord:
        """Return what the service currently knows of a task."""
        task = self.tasks[task_id]
        age = time.monotonic() - task.created
        created_ms = _wall_ms() - round(age * 1000)
        if age < task.latency:
            phase = (TaskState.WAITING, TaskState.QUEUING, TaskState.GENERATING)
            state = phase[min(2, int(3 * age / task.latency))]
            return TaskRecord(
                task_id=task_id, model=task.request.model, state=state, create_time=_dt(created_ms)
            )
        complete = _dt(created_ms + round(task.latency * 1000))
        final = TaskRecord(
            task_id=task_id,
            model=task.request.model,
            state=TaskState.FAIL if task.fails else TaskState.SUCCESS,
            create_time=_dt(created_ms),
            complete_time=complete,
            update_time=complete,
        )
        if task.fails:
            charged = task.price if self.config.charge_failures else None
            return attrs.evolve(
                final,
                fail_code="GENERATION_FAILED",
                fail_msg="simulated failure",
                credits_consumed=charged,
            )
        template = self.config.result_url_template
        urls = tuple(
            URL(template.format(task_id=task_id, n=n))
            if template
            else task.files_base / task_id / f"{n}.png"
            for n in range(task.images)
        )
        return attrs.evolve(final, result_urls=urls, credits_consumed=task.price)

    def _forget_expired(self, now: float) -> None:
        """Drop tasks whose ``task_ttl`` ran out (roughly in order: bounded, not exact)."""
        expiry, stats = self._expiry, self.stats
        while expiry and expiry[0][0] <= now:
            task = self.tasks.pop(expiry.popleft()[1], None)
            if task is None:
                continue
            for counts, key in (
                (stats.tasks_per_request, task.request.fingerprint()),
                (stats.tasks_per_callback, str(task.callback_url)),
            ):
                if counts.get(key, 0) > 1:
                    counts[key] -= 1
                else:
                    counts.pop(key, None)

    def _wire_record(self, record: TaskRecord, *, old_schema: bool = False) -> dict[str, Any]:
        wire = record_to_wire(record, old_schema=old_schema)
        if self.config.tamper is not None:
            self.config.tamper(wire)
        return wire

    def price_of(self, request: TaskRequest) -> float:
        """What ``request`` costs here: its model's price, per image it asks for."""
        spec = MODELS[request.model]
        images: int = getattr(request, "max_images", 1)
        return self.config.prices.get(spec.price_key, self.config.price) * images

    def _new_task(self, request: TaskRequest, callback: URL | None, base: URL) -> _Task:
        cfg = self.config
        lo, hi = cfg.latency
        inputs: tuple[object, ...] = getattr(request, "image_urls", ())
        task = _Task(
            task_id=f"task_seedream_{int(time.time() * 1000)}_{next(self._ids)}",
            request=request,
            callback_url=callback,
            created=time.monotonic(),
            latency=self._rng.uniform(lo, hi) if hi > lo else lo,
            # An input that is one of our uploads, expired, cannot be fetched: the task fails.
            fails=self._rng.random() < cfg.failure_rate
            or any(
                u.host == base.host and u.path.startswith("/uploads/") and not self.upload_alive(u)
                for u in inputs
                if isinstance(u, URL)
            ),
            files_base=base / "files",
            images=getattr(request, "max_images", cfg.images_per_task),
            price=self.price_of(request),
        )
        self._forget_expired(task.created)
        self.tasks[task.task_id] = task
        if cfg.task_ttl is not None:
            self._expiry.append((task.created + task.latency + cfg.task_ttl, task.task_id))
        self.stats.tasks_created += 1
        self.stats.tasks_per_request[request.fingerprint()] += 1
        if callback is not None:
            self.stats.tasks_per_callback[str(callback)] += 1
        if cfg.credits is not None:
            cfg.credits -= task.price
        return task

    def _schedule_callback(self, task: _Task) -> None:
        if task.callback_url is None or self._rng.random() < self.config.callback_drop_rate:
            return
        loop = asyncio.get_running_loop()
        delay = task.latency + self.config.callback_delay
        self._timers[task.task_id] = loop.call_later(delay, self._spawn_delivery, task)

    def _spawn_delivery(self, task: _Task) -> None:
        self._timers.pop(task.task_id, None)
        fut = asyncio.ensure_future(self._deliver_all(task))
        self._background.add(fut)
        fut.add_done_callback(self._background.discard)

    async def _deliver_all(self, task: _Task) -> None:
        for _ in range(1 + self.config.callback_duplicates):
            await self._deliver(task)

    async def _deliver(self, task: _Task) -> None:
        """POST the callback, with up to 3 tries as the service documents."""
        assert task.callback_url is not None
        record = self.record(task.task_id)
        if not record.is_final:  # an early callback: the task ends now
            task.latency = time.monotonic() - task.created
            record = self.record(task.task_id)
        ok = record.state is TaskState.SUCCESS
        body = envelope(
            200 if ok else 501,
            "Playground task completed successfully." if ok else "Playground task failed.",
            self._wire_record(record, old_schema=self.config.callback_old_schema),
        )
        headers = {"Content-Type": "application/json"}
        if self.config.hmac_key is not None:
            stamp = str(int(time.time()))
            headers["X-Webhook-Timestamp"] = stamp
            headers["X-Webhook-Signature"] = sign(self.config.hmac_key, task.task_id, stamp)
        assert self._session is not None
        url = str(task.callback_url)
        for public, local in self.config.callback_tunnels.items():
            if url.startswith(public.rstrip("/") + "/"):
                url = local.rstrip("/") + url[len(public.rstrip("/")) :]
                break
        for _ in range(3):
            try:
                async with self._session.post(
                    URL(url, encoded=True), data=body, headers=headers
                ) as r:
                    await r.read()
                    if r.status == 200:
                        self.stats.callbacks_sent += 1
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            self.stats.callbacks_failed += 1
            await asyncio.sleep(0.05)

    async def _callback_session(self, _: web.Application) -> AsyncIterator[None]:
        timeout = aiohttp.ClientTimeout(total=15)
        connector = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self._session = session
            yield
            self._session = None

    # --- handlers ------------------------------------------------------------------------

    def _gate(self, request: web.Request, *, create: bool = False) -> web.Response | None:
        """Answer what a proxy or the account would answer before the work, if anything."""
        cfg = self.config
        if cfg.require_user_agent and not request.headers.get("User-Agent"):
            return web.Response(status=403, body=_HTML_1010, content_type="text/plain")
        if cfg.html_error_rate and self._rng.random() < cfg.html_error_rate:
            if cfg.html_error_status == 403:
                return web.Response(status=403, body=_HTML_1010, content_type="text/plain")
            page = _HTML_502.replace(b"502", str(cfg.html_error_status).encode())
            return web.Response(status=cfg.html_error_status, body=page, content_type="text/html")
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        refused = self._account_refusal(key, create)
        if refused is None:
            return None
        code, message, headers = refused
        if create:
            self.stats.create_refused[code] += 1
        return _answer(code, message, headers=headers)

    def _account_refusal(self, key: str, create: bool) -> tuple[int, str, dict[str, str]] | None:
        """The account's own refusal of a call (401, 433, 455), if any."""
        cfg = self.config
        revoked = cfg.revoke_key_after is not None and (
            self.stats.tasks_created >= cfg.revoke_key_after
        )
        if not key or (cfg.api_key is not None and key != cfg.api_key) or revoked:
            return 401, "You do not have access permissions", {}
        if cfg.maintenance:
            return 455, "Service is under maintenance", {}
        if (left := self._maintenance_left()) > 0:
            return 455, "Service is under maintenance", {"Retry-After": f"{left:.3f}"}
        if create and cfg.usage_cap is not None and self.stats.tasks_created >= cfg.usage_cap:
            return 433, "The usage limit of this key is exceeded", {}
        return None

    def _maintenance_left(self) -> float:
        """Seconds left of the maintenance window, if in it (else 0)."""
        after = self.config.maintenance_after
        if after is None:
            return 0.0
        since = time.monotonic() - self.started - after
        return (
            self.config.maintenance_for - since if 0 <= since < self.config.maintenance_for else 0
        )

    def _limited(self) -> web.Response:
        self.stats.rate_limited += 1
        headers = {}
        if self.config.retry_after is not None:
            headers["Retry-After"] = f"{self.config.retry_after:g}"
        body = envelope(429, "Rate limited, please try again later")
        return web.Response(status=429, body=body, content_type="application/json", headers=headers)

    async def _create(self, request: web.Request) -> web.StreamResponse:
        self.stats.create_requests += 1
        if (gated := self._gate(request, create=True)) is not None:
            return gated
        if not self._create_window.admit(self.config.create_limit, time.monotonic()):
            return self._limited()
        try:
            body = await _json_body(request)
            edit, callback = parse_create_body(body)
        except InvalidRequest as e:
            return _answer(422, str(e))
        except (MalformedPayload, ValueError) as e:
            return _answer(400, f"bad request: {e}")
        if self.config.credits is not None and self.config.credits < self.price_of(edit):
            self.stats.create_refused[402] += 1
            return _answer(402, "Credits insufficient")
        task = self._new_task(edit, callback, request.url.origin())
        if self.config.callback_early and callback is not None:
            await self._deliver_all(task)
        else:
            self._schedule_callback(task)
        if self.config.create_answer_delay:
            await asyncio.sleep(self.config.create_answer_delay)
        if self.config.lost_answer_rate and self._rng.random() < self.config.lost_answer_rate:
            return await self._lose_answer(request)
        return _answer(200, "success", {"taskId": task.task_id, "recordId": task.task_id})

    async def _lose_answer(self, request: web.Request) -> web.StreamResponse:
        mode = self.config.lost_answer_mode
        if mode == "http500":
            return web.Response(status=500, body=b"<html>500</html>", content_type="text/html")
        if mode == "hang":
            await asyncio.sleep(3600)
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # aiohttp drops a handler cancelled this way quietly

    async def _record_info(self, request: web.Request) -> web.Response:
        self.stats.polls += 1
        now = time.monotonic()
        self.stats.poll_times.append(now)
        if (gated := self._gate(request)) is not None:
            return gated
        if not self._query_window.admit(self.config.query_limit, now):
            return self._limited()
        task = self.tasks.get(request.query.get("taskId", ""))
        if task is None:
            return _answer(404, "task not found")
        if now - task.created < self.config.invisible_for:
            code = self.config.invisible_code
            return _answer(code, "recordInfo is null" if code == 422 else "task not found")
        record = self._wire_record(self.record(task.task_id))
        # Double-encoded, as seen.
        record["param"] = json.dumps(json.dumps({"model": task.request.model}))
        record["costTime"] = round(task.latency)
        return _answer(200, "success", record)

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(stats_json(self))

    async def _credit(self, request: web.Request) -> web.Response:
        if (gated := self._gate(request)) is not None:
            return gated
        left = self.config.credits
        return _answer(200, "success", 1e6 if left is None else round(left, 2))

    async def _file(self, request: web.Request) -> web.Response:
        task = self.tasks.get(request.match_info["task_id"])
        digits = request.match_info["n"]
        n = int(digits) if digits.isascii() and digits.isdigit() else -1  # '²'.isdigit() holds
        if task is None or not 0 <= n < task.images:
            return web.Response(status=404, text="no such file")
        if self.config.file_status != 200:
            return web.Response(status=self.config.file_status, text="file error")
        self.stats.downloads += 1
        aspect = getattr(task.request, "aspect_ratio", None)  # (not every model has one)
        ratio = "1:1" if aspect is None else str(aspect)
        return web.Response(
            body=fake_png(task.task_id, n, self.config.image_size, ratio),
            content_type="image/png",
        )

    # --- uploads ------------------------------------------------------------------------

    async def _stream_upload(self, request: web.Request) -> web.Response:
        if (gated := self._gate(request)) is not None:
            return gated
        self.stats.upload_requests += 1
        fields: dict[str, str] = {}
        data = b""
        try:
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader):
                    continue
                if part.name == "file":
                    data = await self._read_file_part(part)
                    if len(data) > self.config.upload_max_bytes:
                        return _answer(400, "file too large")
                    fields.setdefault("fileName", part.filename or "")
                elif part.name:
                    fields[part.name] = (await part.read()).decode("utf-8", "replace")
        except (ValueError, AssertionError, *_UNREADABLE) as e:
            return _answer(400, f"bad multipart body: {e}")
        if (faulty := self._upload_fault()) is not None:
            return faulty
        return self._store_upload(
            request, data, fields.get("uploadPath", ""), fields.get("fileName")
        )

    async def _base64_upload(self, request: web.Request) -> web.Response:
        if (gated := self._gate(request)) is not None:
            return gated
        self.stats.upload_requests += 1
        try:
            body = await _json_body(request)
            encoded = str(body["base64Data"]).split(",", 1)[-1]
            data = base64.b64decode(encoded, validate=True)
        except (ValueError, KeyError, TypeError) as e:
            return _answer(400, f"bad base64 upload: {e}")
        self.stats.upload_bytes_received += len(data)
        if len(data) > self.config.upload_max_bytes:
            return _answer(400, "file too large")
        if (faulty := self._upload_fault()) is not None:
            return faulty
        return self._store_upload(
            request, data, str(body.get("uploadPath", "")), body.get("fileName")
        )

    async def _read_file_part(self, part: BodyPartReader) -> bytes:
        """The part's bytes, read no further than one byte past the upload limit."""
        chunks, size = [], 0
        while size <= self.config.upload_max_bytes and (chunk := await part.read_chunk()):
            chunks.append(chunk)
            size += len(chunk)
            self.stats.upload_bytes_received += len(chunk)
            if self.config.upload_chunk_hook is not None:
                self.config.upload_chunk_hook(len(chunk))
        return b"".join(chunks)

    def _upload_fault(self) -> web.Response | None:
        fault = self.config.upload_fault
        if fault is None or not fault(self.stats.upload_requests):
            return None
        page = _HTML_502.replace(b"502 Bad Gateway", b"503 Service Unavailable")
        return web.Response(status=503, body=page, content_type="text/html")

    def _store_upload(
        self, request: web.Request, data: bytes, folder: str, name: object
    ) -> web.Response:
        if not data or not folder or "/" in folder or folder.startswith("."):
            return _answer(400, "file and uploadPath (one folder, no slash, no dot first) required")
        name = str(name) if name else f"upload_{next(self._ids)}"
        if "/" in name or name.startswith("."):
            return _answer(400, "bad fileName")
        kept = data if self.config.keep_uploads else b""
        self.uploaded[f"{folder}/{name}"] = (kept, time.monotonic())
        self.stats.uploads += 1
        self.stats.upload_bytes += len(data)
        url = request.url.origin() / "uploads" / folder / name
        return web.Response(
            body=json.dumps(
                {
                    "success": True,
                    "code": 200,
                    "msg": "File uploaded successfully",
                    "data": {
                        "fileName": name,
                        "filePath": f"{folder}/{name}",
                        "downloadUrl": str(url),
                        "fileSize": len(data),
                        "mimeType": "application/octet-stream",
                        "uploadedAt": datetime.now(UTC).isoformat(),
                    },
                }
            ).encode(),
            content_type="application/json",
        )

    async def _uploaded_file(self, request: web.Request) -> web.Response:
        key = f"{request.match_info['folder']}/{request.match_info['name']}"
        stored = self.uploaded.get(key)
        ttl = self.config.upload_ttl
        if stored is None or (ttl is not None and time.monotonic() - stored[1] > ttl):
            return web.Response(status=404, text="no such file (or it expired)")
        return web.Response(body=stored[0])

    def upload_alive(self, url: URL) -> bool:
        """True if ``url`` is an upload the simulator still serves."""
        parts = url.path.strip("/").split("/")
        if len(parts) != 3 or parts[0] != "uploads":
            return False
        stored = self.uploaded.get(f"{parts[1]}/{parts[2]}")
        ttl = self.config.upload_ttl
        return stored is not None and (ttl is None or time.monotonic() - stored[1] <= ttl)


def fake_png(task_id: str, n: int, size: int, aspect_ratio: str = "1:1") -> bytes:
    """
    A real, decodable PNG standing for image ``n`` of a task: a small gradient whose shape
    follows ``aspect_ratio`` (64 pixels on the short side), deterministic per task, padded
    to ``size`` bytes with a private ancillary chunk that decoders skip.
    """
    across, down = (int(x) for x in aspect_ratio.split(":"))
    scale = 64 / min(across, down)
    width, height = round(across * scale), round(down * scale)
    seed = hashlib.sha256(f"{task_id}/{n}".encode()).digest()
    rows = b"".join(
        b"\x00"  # filter type: none
        + bytes((seed[0], (seed[1] + y * 3) % 256, seed[2])) * width  # a vertical gradient
        for y in range(height)
    )
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows))
    end = _chunk(b"IEND", b"")
    padding = size - len(png) - len(end) - 12
    if padding >= 0:
        png += _chunk(b"seDp", bytes(padding))  # private, safe to copy: decoders skip it
    return png + end


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


async def _json_body(request: web.Request) -> Any:
    """The request's JSON; ``ValueError`` for any body that is not (nested too deeply too)."""
    try:
        return await request.json()
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    except (web.RequestPayloadError, HttpProcessingError) as e:  # say, a broken gzip body
        raise ValueError(f"unreadable body: {e}") from None


def _answer(
    code: int, msg: str, data: object = None, *, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=envelope(code, msg, data), content_type="application/json", headers=headers
    )


class _ClientFaultsAreNoCrash(logging.Filter):
    """A request aiohttp refused as malformed (a 400: bad header bytes, a broken gzip body)
    is the client's fault: one INFO line without a traceback. Anything else stays an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        fault = record.exc_info[1] if record.exc_info else None
        if isinstance(fault, web.RequestPayloadError | HttpProcessingError) and (
            not isinstance(fault, HttpProcessingError) or 400 <= fault.code < 500
        ):
            record.msg = f"{record.getMessage()}: {fault}"
            record.args = ()
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


#: The simulator's own logger for aiohttp's protocol errors (never aiohttp's, which is shared).
_http_log = logging.getLogger("seedream_async.simulator.http")
_http_log.addFilter(_ClientFaultsAreNoCrash())


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, or a socket path: nothing another host can reach by IP
        return True


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


async def serve(
    host: str,
    port: int,
    config: SimulatorConfig,
    announce: Callable[[URL], object],
    on_exit: Callable[[Simulator], object] | None = None,
) -> None:
    """Serve a simulator until cancelled; ``announce`` is told its URL once it listens, and
    ``on_exit`` sees the simulator (its stats) when it stops."""
    sim = Simulator(config)
    await sim.start(host, port)
    try:
        announce(sim.url)
        await asyncio.Event().wait()
    finally:
        await sim.aclose()
        if on_exit is not None:
            on_exit(sim)


def stats_json(sim: Simulator) -> dict[str, Any]:
    """The counters a user checks: tasks made, any paid twice, callbacks, the balance."""
    stats = sim.stats
    return {
        "tasks_created": stats.tasks_created,
        "paid_twice": sum(n - 1 for n in stats.tasks_per_callback.values() if n > 1),
        "create_requests": stats.create_requests,
        "create_refused": {str(code): stats.create_refused[code] for code in (401, 402, 433, 455)},
        "rate_limited": stats.rate_limited,
        "polls": stats.polls,
        "callbacks_sent": stats.callbacks_sent,
        "callbacks_failed": stats.callbacks_failed,
        "uploads": stats.uploads,
        "downloads": stats.downloads,
        "credits_left": sim.config.credits,
    }


def window(text: str) -> tuple[int, float]:
    """Parse a rate window written ``N/SECONDS`` (``20/10``: 20 per 10 seconds)."""
    count, _, seconds = text.partition("/")
    try:
        pair = (int(count), float(seconds))
    except ValueError:
        raise argparse.ArgumentTypeError("expected N/SECONDS, like 20/10") from None
    if pair[0] < 1 or pair[1] <= 0:
        raise argparse.ArgumentTypeError("expected N >= 1 and SECONDS > 0")
    return pair


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("must be between 0 and 1")
    return value


#: What the simulator serves when run from the command line: realistic latency, the
#: account's createTask window five times faster (20 per 2 s), a balance that goes down.
#: Copy it (``attrs.evolve``) before changing anything: it is the one shared default.
COMMAND_LINE_DEFAULTS = SimulatorConfig(
    latency=(0.3, 1.5), create_limit=(20, 2.0), credits=10_000.0
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The simulator's command line (``python -m seedream_async.simulator`` and
    ``seedream-async simulate`` share it): where to listen, and its knobs."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8080, help="port (0: any free one)")
    knobs = parser.add_argument_group("knobs (see SimulatorConfig)")
    knobs.add_argument(
        "--latency",
        type=float,
        nargs=2,
        default=COMMAND_LINE_DEFAULTS.latency,
        metavar=("MIN", "MAX"),
        help="seconds from create to final state (default 0.3 1.5)",
    )
    knobs.add_argument(
        "--failure-rate", type=_fraction, default=0.0, help="fraction of tasks that fail"
    )
    knobs.add_argument(
        "--create-limit",
        type=window,
        default=COMMAND_LINE_DEFAULTS.create_limit,
        metavar="N/SECONDS",
        help="createTask window, 429 beyond it (default 20/2, the account's five times faster)",
    )
    knobs.add_argument(
        "--no-create-limit", action="store_true", help="accept every createTask at once"
    )
    knobs.add_argument("--query-limit", type=window, metavar="N/SECONDS", help="recordInfo window")
    knobs.add_argument(
        "--retry-after", type=float, metavar="SECONDS", help="send Retry-After with 429s"
    )
    knobs.add_argument(
        "--credits",
        type=float,
        default=COMMAND_LINE_DEFAULTS.credits,
        help="the account's balance; each task costs --price (default 10000)",
    )
    knobs.add_argument("--price", type=float, default=1.25, help="credits per task")
    knobs.add_argument(
        "--callback-drop-rate", type=_fraction, default=0.0, help="fraction of callbacks lost"
    )
    knobs.add_argument(
        "--callback-delay", type=float, default=0.0, help="seconds from end to callback"
    )
    knobs.add_argument(
        "--callback-duplicates", type=int, default=0, help="extra deliveries of each callback"
    )
    knobs.add_argument(
        "--lost-answer-rate",
        type=_fraction,
        default=0.0,
        help="fraction of createTask answers lost after the task was made",
    )
    knobs.add_argument(
        "--invisible-for",
        type=float,
        default=0.0,
        help="seconds a fresh task is unknown to recordInfo",
    )
    knobs.add_argument("--hmac-key", help="sign callbacks with this key")
    knobs.add_argument("--maintenance", action="store_true", help="answer every call with 455")
    knobs.add_argument(
        "--maintenance-after",
        type=float,
        metavar="SECONDS",
        help="a maintenance window (455) from this long after start, for --maintenance-for",
    )
    knobs.add_argument(
        "--maintenance-for", type=float, default=0.0, metavar="SECONDS", help="its length"
    )
    knobs.add_argument(
        "--revoke-key-after", type=int, metavar="N", help="answer 401 once N tasks were made"
    )
    knobs.add_argument(
        "--usage-cap", type=int, metavar="N", help="createTask answers 433 once N tasks were made"
    )
    knobs.add_argument(
        "--charge-failures", action="store_true", help="charge failed tasks too (creditsConsumed)"
    )
    knobs.add_argument("--seed", type=int, help="seed the random choices (repeatable runs)")


def config_from(args: argparse.Namespace) -> SimulatorConfig:
    """The ``SimulatorConfig`` a parsed ``add_arguments`` command line asks for."""
    return SimulatorConfig(
        latency=tuple(args.latency),
        failure_rate=args.failure_rate,
        create_limit=None if args.no_create_limit else args.create_limit,
        query_limit=args.query_limit,
        retry_after=args.retry_after,
        credits=args.credits,
        price=args.price,
        callback_drop_rate=args.callback_drop_rate,
        callback_delay=args.callback_delay,
        callback_duplicates=args.callback_duplicates,
        lost_answer_rate=args.lost_answer_rate,
        invisible_for=args.invisible_for,
        hmac_key=args.hmac_key.encode() if args.hmac_key else None,
        maintenance=args.maintenance,
        maintenance_after=args.maintenance_after,
        maintenance_for=args.maintenance_for,
        revoke_key_after=args.revoke_key_after,
        usage_cap=args.usage_cap,
        charge_failures=args.charge_failures,
        seed=args.seed,
    )


def announce(url: URL, create_limit: tuple[int, float] | None = None) -> None:
    """Print where the simulator serves (the first line of output: scripts read it), and the
    ``Settings`` that match its createTask window (a client's default is the real account's)."""
    print(f"seedream simulator serving on {url}")  # scripts read the URL at the line's end
    print(f"counters: {url / 'simulator' / 'stats'}; stop with Ctrl-C")
    if create_limit is not None:
        count, period = create_limit
        print(
            f"createTask window: {count} per {period:g} s; a client at that speed sets"
            f" Settings(create_rate={count}, create_period={float(period)!r})"
        )
    sys.stdout.flush()


def report(sim: Simulator) -> None:
    """Print the counters when the simulator stops."""
    counts = ", ".join(
        f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats_json(sim).items()
    )
    with contextlib.suppress(BrokenPipeError):  # whoever read us may be gone
        print(f"seedream simulator stopped: {counts}")
        sys.stdout.flush()


def run_command_line(args: argparse.Namespace) -> int:
    """Serve as the command line asks until Ctrl-C (exit 0) or SIGTERM."""
    config = config_from(args)

    async def until_signal() -> None:
        main = asyncio.current_task()
        assert main is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await serve(
                args.host, args.port, config, lambda url: announce(url, config.create_limit), report
            )

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(until_signal())
    return 0


def main(argv: list[str] | None = None) -> None:
    """Serve the simulator alone: ``python -m seedream_async.simulator --port 8080``."""
    parser = argparse.ArgumentParser(
        prog="python -m seedream_async.simulator", description=__doc__.splitlines()[1]
    )
    add_arguments(parser)
    sys.exit(run_command_line(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
