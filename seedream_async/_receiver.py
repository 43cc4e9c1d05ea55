"""
The callback receiver: an aiohttp app, and a framework-neutral handler behind it.

It faces the internet, so every request is hostile until proven otherwise: POST only, a
known unguessable token in the path, a bounded body of the documented shape, an optional
HMAC signature within a time window and never replayed, and a task id that matches the
token. A valid callback is acknowledged at once; resolving the task happens off the
request path. No input produces a 500, and no token, key or signature is logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

import attrs
from aiohttp import web
from yarl import URL

from ._errors import ClientClosed, InvalidRequest
from ._signing import verify
from ._waiters import Offer, Registry
from ._wire import MalformedPayload, parse_callback

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


class CallbackReceiver:
    """
    Receives the service's ``callBackUrl`` POSTs and resolves the awaiting tasks.

    Give it to ``SeedreamClient(callbacks=...)``. ``public_url`` is what the service must
    call (a tunnel or load balancer); by default the bound address. To serve it from an
    existing aiohttp app instead, pass ``host=None`` and the ``public_url`` of the mount
    point, and mount ``receiver.app`` there (``add_subapp``); other frameworks call
    ``handle()``.
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
    ) -> None:
        if not path.startswith("/"):
            raise InvalidRequest("path", "must start with '/'")
        if host is None and public_url is None:
            raise InvalidRequest("public_url", "a mounted receiver (host=None) needs public_url")
        self.host = host
        self.port = port
        self.path = path.rstrip("/")
        self.max_body = max_body
        self.signature_window = signature_window
        #: The signature covers only the task id: confirm a callback's URLs with recordInfo.
        self.confirm_with_record_info = confirm_with_record_info
        self._hmac_key = hmac_key.encode() if isinstance(hmac_key, str) else hmac_key
        self._public_url = URL(public_url) if isinstance(public_url, str) else public_url
        self._url_prefix: str | None = None
        self._seen_signatures: dict[str, float] = {}
        self._registry: Registry | None = None
        self._runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=max_body)
        self.app.router.add_route("*", self.path + "/{token}", self._aiohttp_handler)

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
    def public_url(self) -> URL:
        """The base URL the service calls back."""
        if self._public_url is None:
            raise ClientClosed("the receiver has no public URL until it is started")
        return self._public_url

    def url_for(self, token: str) -> URL:
        """Return the callback URL for one submission's token (URL-safe by construction)."""
        if self._url_prefix is None:
            self._url_prefix = str(self.public_url / self.path.lstrip("/")) + "/"
        return URL(self._url_prefix + token, encoded=True)

    def attach(self, registry: Registry) -> None:
        """Resolve tasks of this registry (one client's); called by the client."""
        if self._registry is not None and self._registry is not registry:
            raise InvalidRequest("callbacks", "this receiver already serves another client")
        self._registry = registry

    def detach(self, registry: Registry) -> None:
        """Stop resolving tasks of ``registry``."""
        if self._registry is registry:
            self._registry = None

    async def start(self) -> URL:
        """Serve on ``host:port``; return the public URL."""
        if self._runner is not None or self.host is None:
            return self.public_url
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
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

    async def _aiohttp_handler(self, request: web.Request) -> web.Response:
        body = b""
        if request.method == "POST":
            if (request.content_length or 0) > self.max_body:
                return _response(Reply.error(413, "body too large"))
            try:
                body = await request.read()  # bounded by the app's client_max_size
            except web.HTTPRequestEntityTooLarge:
                return _response(Reply.error(413, "body too large"))
        reply = self.handle(request.method, request.match_info["token"], body, request.headers)
        return _response(reply)

    def handle(self, method: str, token: str, body: bytes, headers: Mapping[str, str]) -> Reply:
        """Judge one callback request (any framework): raw parts in, status and body out."""
        if method != "POST":
            return Reply.error(405, "method not allowed")
        registry = self._registry
        if registry is None:
            return Reply.error(503, "not ready")
        if len(body) > self.max_body:
            return Reply.error(413, "body too large")
        try:
            record = parse_callback(body)
        except MalformedPayload:
            return Reply.error(400, "not a callback")
        if self._hmac_key is not None and not self._signed(record.task_id, headers):
            return Reply.error(401, "bad signature")
        offer = registry.offer(token, record)
        if offer is Offer.UNKNOWN_TOKEN:
            return Reply.error(404, "unknown callback")
        if offer is Offer.WRONG_TASK:
            log.warning("refused a callback whose task id does not match its token")
            return Reply.error(400, "task id does not match")
        return _OK

    def _signed(self, task_id: str, headers: Mapping[str, str]) -> bool:
        assert self._hmac_key is not None
        stamp = headers.get("X-Webhook-Timestamp", "")
        signature = headers.get("X-Webhook-Signature", "")
        try:
            age = time.time() - int(stamp)
        except ValueError:
            return False
        if abs(age) > self.signature_window or not signature:
            return False
        if not verify(self._hmac_key, task_id, stamp, signature):
            return False
        return self._first_use(signature)

    def _first_use(self, signature: str) -> bool:
        """Refuse a signature seen before within the window (a replay)."""
        now = time.monotonic()
        seen = self._seen_signatures
        if len(seen) > 1024:
            for old in [s for s, until in seen.items() if until < now]:
                del seen[old]
        if seen.get(signature, 0.0) >= now:
            return False
        seen[signature] = now + 2 * self.signature_window
        return True


def _response(reply: Reply) -> web.Response:
    return web.Response(status=reply.status, body=reply.body, content_type="application/json")
