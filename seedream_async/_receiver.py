"""
The callback receiver: an aiohttp app, and a framework-neutral handler behind it.

It faces the internet, so every request is hostile until proven otherwise: POST only, a
known unguessable token in the path, a bounded body of the documented shape read within a
time limit, an optional HMAC signature within a time window, and a task id that matches the
token. Where the token's task id is already known the signature is checked before the body
is parsed. A signature counts as used only once its callback was accepted, so a redelivery
is acknowledged (2xx), as webhook senders expect. What a callback means is the lifecycle's
call. No input produces a 500, and no token, key or signature is logged.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

import attrs
from aiohttp import HttpVersion11, web
from yarl import URL

from ._coordination import Coordinator
from ._errors import ClientClosed, CoordinatorUnavailable, InvalidRequest
from ._lifecycle import Lifecycle, Offer
from ._models import TaskRecord
from ._signing import verify
from ._wire import MalformedPayload, parse_callback

TIMESTAMP_HEADER = "X-Webhook-Timestamp"
SIGNATURE_HEADER = "X-Webhook-Signature"

log = logging.getLogger("seedream_async")

_ACK = json.dumps({"code": 200, "msg": "success"}).encode()


@attrs.frozen
class Reply:
    """What to answer a callback request: a status and a JSON body."""

    status: int
    body: bytes

    @classmethod
    def error(cls, status: int, msg: str) -> Reply:
        """A refusal with a short reason that leaks nothing."""
        return cls(status, json.dumps({"code": status, "msg": msg}).encode())


_OK = Reply(200, _ACK)
_NOT_FOUND = Reply.error(404, "not found")


class CallbackReceiver:
    """
    Receives the service's ``callBackUrl`` POSTs and resolves the awaiting tasks.

    Give it to ``SeedreamClient(callbacks=...)``. ``public_url`` is what the service must
    call (a tunnel or load balancer); by default the bound address. To serve it from an
    existing app instead, pass ``host=None`` and the ``public_url`` of that app, and mount
    ``receiver.app`` (aiohttp, ``add_subapp``) or ``receiver.asgi_app()`` (Starlette,
    FastAPI, Litestar, any ASGI server) at ``receiver.path``; anything else calls
    ``ahandle()``. A body must arrive within ``body_timeout`` seconds.
    """

    def __init__(
        self,
        host: str | None = "127.0.0.1",
        port: int = 0,
        *,
        public_url: str | URL | None = None,
        path: str = "/seedream/callback",
        hmac_key: bytes | str | None = None,
        max_body: int = 64 * 1024,
        signature_window: float = 300.0,
        confirm_with_record_info: bool = False,
        body_timeout: float = 10.0,
    ) -> None:
        if not path.startswith("/"):
            raise InvalidRequest("path", "must start with '/'")
        if host is None and public_url is None:
            raise InvalidRequest("public_url", "a mounted receiver (host=None) needs public_url")
        if public_url is None and host is not None and _is_wildcard(host):
            raise InvalidRequest(
                "public_url", f"a receiver listening on {host!r} needs the public_url to call"
            )
        if public_url is not None:
            public_url = _check_public_url(public_url)
        self.host = host
        self.port = port
        self.path = path.rstrip("/")
        self._token_prefix = self.path + "/"
        self.max_body = max_body
        self.signature_window = signature_window
        self.body_timeout = body_timeout
        #: The signature covers only the task id: confirm a callback's URLs with recordInfo.
        self.confirm_with_record_info = confirm_with_record_info
        self._hmac_key = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key
        self._public_url = public_url
        self._url_prefix: str | None = None
        #: (signature, token) of accepted callbacks -> monotonic time it may be forgotten.
        self._seen_signatures: dict[tuple[str, str], float] = {}
        self._lifecycle: Lifecycle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped = False
        self._coordinator: Coordinator | None = None
        self._runner: web.BaseRunner | None = None
        self.app = web.Application(client_max_size=max_body)
        self.app.router.add_route("*", self.path + "/{token}", self._aiohttp_handler)
        # Mounted in someone's aiohttp app: once it shuts down, nothing can call back.
        self.app.on_shutdown.append(self._app_shutting_down)

    def __repr__(self) -> str:
        signed = self._hmac_key is not None
        return f"<CallbackReceiver public_url={self._public_url!s} signed={signed}>"

    @property
    def needs_server(self) -> bool:
        """False when the receiver is mounted in someone else's app (``host=None``)."""
        return self.host is not None

    @property
    def running(self) -> bool:
        """True while this receiver serves its own socket."""
        return self._runner is not None

    @property
    def local_url(self) -> URL | None:
        """Where this receiver listens (its own socket), once started; None when mounted."""
        if self._runner is None or not self._runner.addresses:
            return None
        host, port = self._runner.addresses[0][:2]
        return URL.build(scheme="http", host=host, port=port)

    @property
    def public_url(self) -> URL:
        """The base URL the service calls back."""
        if self._public_url is None:
            raise ClientClosed("the receiver has no public URL until it is started")
        return self._public_url

    def url_for(self, token: str) -> URL:
        """Return the callback URL for one submission's token (URL-safe by construction)."""
        return URL(self.url_string(token), encoded=True)

    def url_string(self, token: str) -> str:
        """``url_for(token)`` as the string createTask sends (no URL object per submission)."""
        if self._url_prefix is None:
            self._url_prefix = str(self.public_url / self.path.lstrip("/")) + "/"
        return self._url_prefix + token

    def attach(self, lifecycle: Lifecycle, coordinator: Coordinator | None = None) -> None:
        """Resolve tasks of this lifecycle (one client's); called by the client."""
        if self._lifecycle is not None and self._lifecycle is not lifecycle:
            raise InvalidRequest("callbacks", "this receiver already serves another client")
        self._lifecycle = lifecycle
        self._coordinator = coordinator
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:  # attached outside a loop (a synchronous test of ``handle``)
            self._loop = None
        if self._stopped:
            lifecycle.callbacks_stopped(others_may_tell=self._fleet)

    def detach(self, lifecycle: Lifecycle) -> None:
        """Stop resolving tasks of ``lifecycle``."""
        if self._lifecycle is lifecycle:
            self._lifecycle = None

    @property
    def stopped(self) -> bool:
        """True once ``stop_callbacks()`` was called: callbacks can no longer arrive."""
        return self._stopped

    def stop_callbacks(self) -> None:
        """
        The server in front of this receiver stopped taking requests (a graceful shutdown).

        No callback can arrive any more, so the client polls every waiting task at once
        (instead of after its safety-poll delay) and polls new submissions as in polling
        mode. A mounted aiohttp app calls this on its own ``on_shutdown``; with an ASGI
        server, call it when the server begins to shut down (see the README). Safe to call
        from a signal handler or another thread: the work is done on the client's event
        loop. Idempotent.
        """
        self._stopped = True
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        # Thread-safe, and it wakes the loop: a signal handler runs while the loop may be
        # blocked waiting for I/O, which plain call_soon would not interrupt.
        loop.call_soon_threadsafe(self._stop_now)

    @property
    def _fleet(self) -> bool:
        """Other processes of a fleet may still receive this process's callbacks."""
        return self._coordinator is not None and self._coordinator.shared

    def _stop_now(self) -> None:
        self._stopped = True
        if self._lifecycle is not None:
            self._lifecycle.callbacks_stopped(others_may_tell=self._fleet)

    async def _app_shutting_down(self, _app: web.Application) -> None:
        if self._runner is None:  # our own server stops only when the client closes
            self._stop_now()

    def asgi_app(self) -> AsgiApp:
        """
        This receiver as an ASGI application, to mount at ``self.path``.

        For example ``fastapi_app.mount(receiver.path, receiver.asgi_app())``, with
        ``CallbackReceiver(host=None, public_url=<the URL the app is reached at>)``. The
        token is the last segment of the request path. It judges as ``ahandle()`` does, with
        the same bounded body read (``max_body``, ``body_timeout``); no input makes a 500.
        """
        return AsgiApp(self)

    async def start(self) -> URL:
        """Serve on ``host:port``; return the public URL."""
        if self._runner is not None or self.host is None:
            return self.public_url
        # aiohttp's low-level server: ``self.app``'s one route without its router, signals
        # and request wrapper (~5 us less CPU per callback); ``self.app`` stays for mounting.
        server = web.Server(self._serve, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        if self._public_url is None:
            host, port = runner.addresses[0][:2]
            self._public_url = URL.build(scheme="http", host=host, port=port)
            self._url_prefix = None
        return self._public_url

    async def aclose(self) -> None:
        """Stop serving; idempotent."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def _serve(self, request: web.BaseRequest) -> web.Response:
        """Every request to this receiver's own server: the mounted app's route, by hand."""
        target = request.raw_path
        prefix = self._token_prefix
        if not target.startswith(prefix) or "%" in target or "?" in target or "#" in target:
            target = request.path  # decoded, as the router matches it (no token has a '/')
            if not target.startswith(prefix):
                return _response(_NOT_FOUND)
        token = target[len(prefix) :]
        if not token or "/" in token or "{" in token or "}" in token:
            return _response(_NOT_FOUND)  # what the router's ``{token}`` does not match
        if request.headers.get("Expect") is not None:
            refused = await _expect(request)
            if refused is not None:  # (a response is a mapping: an empty one is falsy)
                return refused
        return await self._answer(request, token)

    async def _aiohttp_handler(self, request: web.Request) -> web.Response:
        """The mounted app's route: its router found the token."""
        return await self._answer(request, request.match_info["token"])

    async def _answer(self, request: web.BaseRequest, token: str) -> web.Response:
        body = b""
        if request.method == "POST":
            length = request.content_length
            if (length or 0) > self.max_body:
                return _response(Reply.error(413, "body too large"))
            try:
                if request.content.is_eof():
                    body = request.content.read_nowait()  # all here already: no timer, no wait
                else:
                    async with asyncio.timeout(self.body_timeout):
                        body = await self._read_body(request)
            except _TooLarge:
                return _response(Reply.error(413, "body too large"))
            except TimeoutError:
                return _response(Reply.error(408, "body too slow"))
            except (ConnectionError, web.HTTPException):
                return _response(Reply.error(400, "incomplete body"))  # the peer hung up
        here = self._here(request.method, token, body, request.headers)
        if not isinstance(here, Reply):
            here = await self._route(token, *here)  # inline: no extra coroutine per callback
        return _response(here)

    async def _read_body(self, request: web.BaseRequest) -> bytes:
        """Read at most ``max_body`` bytes, whatever the app around us allows."""
        body = bytearray()
        while chunk := await request.content.read(self.max_body + 1 - len(body)):
            body += chunk
            if len(body) > self.max_body:
                raise _TooLarge
        return bytes(body)

    def handle(self, method: str, token: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """
        Judge one callback request (any framework): raw parts in, status and body out.

        ``headers`` may use any case (ASGI frameworks hand them over lower-cased). With a
        fleet coordinator, use ``ahandle``: a token another process issued needs Redis.
        """
        here = self._here(method, token, body, headers)
        return here if isinstance(here, Reply) else Reply.error(404, "unknown callback")

    async def ahandle(
        self, method: str, token: str, body: bytes, headers: Mapping[str, str]
    ) -> Reply:
        """
        ``handle``, and route a valid callback for a token this process does not hold to
        the process that does (through the fleet's coordinator): 503 if that cannot be done
        now, so the service tries again.
        """
        here = self._here(method, token, body, headers)
        return here if isinstance(here, Reply) else await self._route(token, *here)

    def _here(
        self, method: str, token: str, body: bytes, headers: Mapping[str, str]
    ) -> Reply | tuple[TaskRecord, str | None]:
        """The reply of this process; or, for a valid callback for a token another process
        of the fleet may hold, the record and signature to route there."""
        verdict = self._judge(method, token, body, headers)
        if isinstance(verdict, Reply):
            return verdict
        assert self._lifecycle is not None  # _judge answered 503 otherwise
        offer = self._lifecycle.offer(token, verdict[0])
        if offer is Offer.UNKNOWN_TOKEN and self._fleet:
            return verdict
        return self._reply(offer, token, verdict[1])

    async def _route(self, token: str, record: TaskRecord, signature: str | None) -> Reply:
        """Hand a valid callback for a token this process does not hold to the fleet."""
        assert self._coordinator is not None
        try:
            offer = await self._coordinator.deliver(token, record)
        except CoordinatorUnavailable:
            return Reply.error(503, "try again later")
        return self._reply(offer, token, signature)

    def _judge(
        self, method: str, token: str, body: bytes, headers: Mapping[str, str]
    ) -> Reply | tuple[TaskRecord, str | None]:
        """Refuse what is not a valid callback; else its record and signature."""
        if method != "POST":
            return Reply.error(405, "method not allowed")
        lifecycle = self._lifecycle
        if lifecycle is None:
            return Reply.error(503, "not ready")
        if len(body) > self.max_body:
            return Reply.error(413, "body too large")
        stamp, signature = "", None
        if self._hmac_key is not None:
            stamp, signature = (
                _header(headers, TIMESTAMP_HEADER),
                _header(headers, SIGNATURE_HEADER),
            )
            known = lifecycle.bound_task_id(token)
            if known is not None and not self._signed(known, stamp, signature):
                return Reply.error(401, "bad signature")  # refused before parsing the body
        try:
            record = parse_callback(body)
        except MalformedPayload:
            return Reply.error(400, "not a callback")
        if signature is not None and not self._signed(record.task_id, stamp, signature):
            return Reply.error(401, "bad signature")
        if signature is not None and self._replayed(signature, token):
            return _OK  # the same delivery again: already accepted
        return record, signature

    def _reply(self, offer: Offer, token: str, signature: str | None) -> Reply:
        if offer is Offer.UNKNOWN_TOKEN:
            return Reply.error(404, "unknown callback")
        if offer is Offer.WRONG_TASK:
            log.warning("refused a callback whose task id does not match its token")
            return Reply.error(400, "task id does not match")
        if signature is not None and offer is Offer.ACCEPTED:
            self._remember(signature, token)
        return _OK

    def _signed(self, task_id: str, stamp: str, signature: str) -> bool:
        assert self._hmac_key is not None
        try:
            age = time.time() - int(stamp)
        except ValueError:
            return False
        if abs(age) > self.signature_window or not signature:
            return False
        return verify(self._hmac_key, task_id, stamp, signature)

    def _replayed(self, signature: str, token: str) -> bool:
        """True for a signature already accepted for this token within the window."""
        until = self._seen_signatures.get((signature, token))
        return until is not None and until >= time.monotonic()

    def _remember(self, signature: str, token: str) -> None:
        """Record an accepted callback's signature; old ones expire after the window."""
        now = time.monotonic()
        seen = self._seen_signatures
        if len(seen) > 1024:
            for old in [key for key, until in seen.items() if until < now]:
                del seen[old]
        seen[signature, token] = now + 2 * self.signature_window


AsgiScope = MutableMapping[str, Any]
AsgiReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
AsgiSend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class AsgiApp:
    """A ``CallbackReceiver`` as an ASGI 3 application (``receiver.asgi_app()``)."""

    def __init__(self, receiver: CallbackReceiver) -> None:
        self.receiver = receiver

    async def __call__(self, scope: AsgiScope, receive: AsgiReceive, send: AsgiSend) -> None:
        """Serve one ASGI connection: HTTP callbacks; lifespan and websockets politely."""
        kind = scope["type"]
        if kind == "lifespan":  # run as the whole app: nothing to set up
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            self.receiver._stop_now()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if kind != "http":
            await send({"type": "websocket.close", "code": 1008})
            return
        reply = await self._judge(scope, receive)
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(reply.body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": reply.body})

    async def _judge(self, scope: AsgiScope, receive: AsgiReceive) -> Reply:
        receiver = self.receiver
        method = str(scope.get("method", ""))
        path = str(scope.get("path", ""))
        token = path.rstrip("/").rpartition("/")[2] if "/" in path else ""
        if not token:
            return Reply.error(404, "unknown callback")
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())
        }
        body = b""
        if method == "POST":
            try:
                length = int(headers.get("content-length", "0") or 0)
            except ValueError:
                return Reply.error(400, "bad content-length")
            if length > receiver.max_body:
                return Reply.error(413, "body too large")
            try:
                async with asyncio.timeout(receiver.body_timeout):
                    body = await self._read_body(receive)
            except _TooLarge:
                return Reply.error(413, "body too large")
            except TimeoutError:
                return Reply.error(408, "body too slow")
            except ConnectionError:
                return Reply.error(400, "incomplete body")
        return await receiver.ahandle(method, token, body, headers)

    async def _read_body(self, receive: AsgiReceive) -> bytes:
        limit = self.receiver.max_body
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ConnectionError("the peer hung up")
            chunk = message.get("body", b"")
            body += chunk if isinstance(chunk, bytes | bytearray) else b""
            if len(body) > limit:
                raise _TooLarge
            if not message.get("more_body", False):
                return bytes(body)


def _response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, content_type="application/json")


async def _expect(request: web.BaseRequest) -> web.Response | None:
    """Answer an ``Expect`` header as aiohttp's router does: 100 Continue, or 417."""
    if request.version != HttpVersion11:
        return None
    if request.headers.get("Expect", "").lower() != "100-continue":
        return _response(Reply.error(417, "unknown Expect"))
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the answer proper has not started
    return None


class _TooLarge(Exception):
    """A body over ``max_body``."""


def _header(headers: Mapping[str, str], name: str) -> str:
    """Read a header whatever the case of the mapping's keys."""
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), "")
    return value if isinstance(value, str) else ""


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host == ""


def _check_public_url(value: str | URL) -> URL:
    try:
        url = URL(value) if isinstance(value, str) else value
    except (TypeError, ValueError) as e:
        raise InvalidRequest("public_url", f"{value!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest(
            "public_url", f"{str(value)!r} is not an absolute http(s) URL the service can call"
        )
    return url
