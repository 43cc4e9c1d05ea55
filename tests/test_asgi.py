"""
The receiver mounted in someone else's app: FastAPI under a real uvicorn server on loopback,
and an aiohttp app; and what happens to waiting edits when that app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
import uvicorn
from aiohttp import web
from fastapi import FastAPI

from seedream_async import (
    CallbackReceiver,
    SeedreamClient,
    SubmissionUnknown,
    TaskRecord,
    TaskState,
)
from seedream_async._wire import envelope, record_to_wire
from seedream_async.simulator import Simulator
from tests.conftest import API_KEY, FAST, request, until


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


@attrs.frozen
class _Mounted:
    """A socket for uvicorn, a receiver whose public URL is it, and a client using both."""

    sock: socket.socket
    port: int
    receiver: CallbackReceiver
    client: SeedreamClient


def _mounted(sim: Simulator, *, max_body: int = 64 * 1024, **settings: Any) -> _Mounted:
    sock = _loopback_socket()
    port = sock.getsockname()[1]
    receiver = CallbackReceiver(host=None, public_url=f"http://127.0.0.1:{port}", max_body=max_body)
    client = SeedreamClient(
        API_KEY, base_url=sim.url, callbacks=receiver, settings=attrs.evolve(FAST, **settings)
    )
    return _Mounted(sock, port, receiver, client)


def _service(client: SeedreamClient, receiver: CallbackReceiver) -> FastAPI:
    """The README's FastAPI example: the lifespan opens and closes the client."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with client:
            yield

    app = FastAPI(lifespan=lifespan)

    @app.post("/edit/{n}")
    async def edit(n: int) -> dict[str, Any]:
        result = await client.edit(request(n))
        return {"task_id": result.task_id, "urls": [str(u) for u in result.urls]}

    app.mount(receiver.path, receiver.asgi_app())
    return app


@contextlib.asynccontextmanager
async def _uvicorn(app: FastAPI, sock: socket.socket) -> AsyncIterator[uvicorn.Server]:
    config = uvicorn.Config(app, lifespan="on", log_level="warning", ws="none", http="h11")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await until(lambda: server.started or serving.done())
        if serving.done():
            serving.result()
        yield server
    finally:
        server.should_exit = True
        await serving


@pytest.mark.slow
async def test_fastapi_mounted_receiver_resolves_200_concurrent_edits(sim: Simulator) -> None:
    # Safety polls out of reach: every edit must be resolved by its callback.
    m = _mounted(sim, safety_poll_after=600.0)
    sock, port, receiver, client = m.sock, m.port, m.receiver, m.client
    sim.config.latency = (0.05, 0.2)
    async with (
        _uvicorn(_service(client, receiver), sock),
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http,
    ):

        async def one(n: int) -> dict[str, Any]:
            async with http.post(f"/edit/{n}") as response:
                assert response.status == 200, await response.text()
                body: dict[str, Any] = await response.json()
                return body

        answers = await asyncio.gather(*(one(n) for n in range(200)))
    assert len({a["task_id"] for a in answers}) == 200
    assert all(a["urls"] for a in answers)
    assert sim.stats.tasks_created == 200
    assert sim.stats.callbacks_sent == 200
    assert sim.stats.callbacks_failed == 0
    assert sim.stats.polls == 0


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/seedream/callback/abc", b"", 405),
        ("POST", "/seedream/callback/nosuchtoken", None, 404),
        ("POST", "/seedream/callback/x", b'{"code":200}', 400),
        ("POST", "/seedream/callback/x", b"x" * (70 * 1024), 413),
        ("POST", "/seedream/callback/x", b"\xff\xfe not json", 400),
        ("PUT", "/seedream/callback/", b"", 405),
    ],
)
async def test_asgi_app_judges_hostile_requests_without_a_500(
    sim: Simulator,
    method: str,
    path: str,
    body: bytes | None,
    status: int,
) -> None:
    if body is None:  # a well-formed callback, for a token nobody issued
        record = TaskRecord(task_id="task-unknown", state=TaskState.SUCCESS)
        body = envelope(200, "ok", record_to_wire(record))
    m = _mounted(sim)
    sock, port, receiver, client = m.sock, m.port, m.receiver, m.client
    async with (
        _uvicorn(_service(client, receiver), sock),
        aiohttp.ClientSession() as http,
        http.request(method, f"http://127.0.0.1:{port}{path}", data=body) as response,
    ):
        assert response.status == status
        assert response.content_type == "application/json"


async def test_asgi_app_refuses_an_unbounded_chunked_body(sim: Simulator) -> None:
    m = _mounted(sim, max_body=1024)
    sock, port, receiver, client = m.sock, m.port, m.receiver, m.client

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(1000):
            yield b"{" * 512
            await asyncio.sleep(0)

    async with (
        _uvicorn(_service(client, receiver), sock),
        aiohttp.ClientSession() as http,
        http.post(f"http://127.0.0.1:{port}/seedream/callback/tok", data=endless()) as response,
    ):
        assert response.status == 413


@pytest.mark.slow
async def test_uvicorn_shutdown_polls_waiting_edits_at_once(sim: Simulator) -> None:
    """Requests in flight when the server stops end by polling, not after the safety delay."""
    m = _mounted(sim, safety_poll_after=600.0)
    sock, port, receiver, client = m.sock, m.port, m.receiver, m.client
    sim.config.latency = (1.0, 1.0)

    async with (
        _uvicorn(_service(client, receiver), sock) as server,
        aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http,
    ):

        async def one(n: int) -> int:
            async with http.post(f"/edit/{n}") as response:
                return response.status

        calls = [asyncio.create_task(one(n)) for n in range(20)]
        await until(lambda: sim.stats.tasks_created == 20)
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        # What the README's uvicorn recipe does on SIGTERM (a real signal would reach pytest).
        receiver.stop_callbacks()
        server.should_exit = True
        statuses = await asyncio.gather(*calls)
        took = loop.time() - stopped_at
    assert statuses == [200] * 20
    assert took < 30  # the 600 s safety poll was not waited for
    assert sim.stats.polls >= 20
    assert receiver.stopped


async def _call(app: Any, scope: dict[str, Any], messages: list[dict[str, Any]]) -> list[Any]:
    """Drive an ASGI app by the protocol itself: what it sent, in order."""
    sent: list[Any] = []
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        await asyncio.sleep(3600)  # a peer that never sends more
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def _http(method: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": "/seedream/callback/t", "headers": headers}


async def test_asgi_app_by_the_protocol(sim: Simulator) -> None:
    receiver = CallbackReceiver(host=None, public_url="http://127.0.0.1:1", body_timeout=0.2)
    client = SeedreamClient(API_KEY, base_url=sim.url, callbacks=receiver, settings=FAST)
    app = receiver.asgi_app()
    async with client:
        bad_length = await _call(app, _http("POST", [(b"content-length", b"nope")]), [])
        assert bad_length[0]["status"] == 400
        hung_up = await _call(app, _http("POST", []), [{"type": "http.disconnect"}])
        assert hung_up[0]["status"] == 400
        slow = await _call(app, _http("POST", []), [{"type": "http.request", "more_body": True}])
        assert slow[0]["status"] == 408
        socket_ = await _call(app, {"type": "websocket", "path": "/"}, [])
        assert socket_ == [{"type": "websocket.close", "code": 1008}]
        lifespan = await _call(
            app,
            {"type": "lifespan"},
            [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}],
        )
        assert [m["type"] for m in lifespan] == [
            "lifespan.startup.complete",
            "lifespan.shutdown.complete",
        ]
        assert receiver.stopped  # the app it serves is gone: nothing can call back


@pytest.mark.slow
async def test_aiohttp_app_shutdown_polls_waiting_edits_at_once(sim: Simulator) -> None:
    receiver = CallbackReceiver(host=None, public_url="http://127.0.0.1:1/hooks")
    app = web.Application()
    app.add_subapp("/hooks", receiver.app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    settings = attrs.evolve(FAST, safety_poll_after=600.0)
    sim.config.latency = (1.0, 1.0)
    async with SeedreamClient(
        API_KEY, base_url=sim.url, callbacks=receiver, settings=settings
    ) as client:
        handles = [await client.submit(request(n)) for n in range(10)]
        loop = asyncio.get_running_loop()
        stopped_at = loop.time()
        await runner.cleanup()  # the service shuts down: on_shutdown reaches the receiver
        assert receiver.stopped
        results = await asyncio.gather(*(h.result() for h in handles))
        took = loop.time() - stopped_at
        assert len(results) == 10
        assert took < 30
        # New submissions poll: they carry no callBackUrl nobody would serve.
        late = await client.edit(request(99))
        assert late.task_id
    assert len(sim.stats.tasks_per_callback) == 10  # the late one had no callBackUrl
    assert sim.stats.polls >= 11


async def test_stop_callbacks_from_another_thread_wakes_the_loop(sim: Simulator) -> None:
    """As from a signal handler or a server's own thread: the idle loop is woken to act."""
    receiver = CallbackReceiver(host=None, public_url="http://127.0.0.1:1")
    settings = attrs.evolve(FAST, safety_poll_after=600.0)
    sim.config.latency = (0.5, 0.5)
    async with SeedreamClient(
        API_KEY, base_url=sim.url, callbacks=receiver, settings=settings
    ) as client:
        handles = [await client.submit(request(n)) for n in range(3)]
        loop = asyncio.get_running_loop()
        started = loop.time()
        threading.Timer(0.05, receiver.stop_callbacks).start()
        results = await asyncio.gather(*(h.result() for h in handles))
        assert len(results) == 3
        assert loop.time() - started < 10  # not the 600 s safety poll
    assert receiver.stopped


async def test_stop_callbacks_ends_a_lost_answer_at_once(sim: Simulator) -> None:
    """A submission whose createTask answer was lost has no id to poll; once no callback can
    come, it ends with SubmissionUnknown now instead of at its deadline."""
    receiver = CallbackReceiver(host=None, public_url="http://127.0.0.1:1")
    sim.config.lost_answer_rate = 1.0
    async with SeedreamClient(API_KEY, base_url=sim.url, callbacks=receiver, settings=FAST) as c:
        waiting = asyncio.create_task(c.submit(request(0)))
        await until(lambda: sim.stats.tasks_created == 1)
        await asyncio.sleep(0.1)
        assert not waiting.done()  # waiting for a callback that could still tell
        receiver.stop_callbacks()
        async with asyncio.timeout(5):  # not the 900 s deadline
            with pytest.raises(SubmissionUnknown):
                await waiting
    assert sim.stats.tasks_created == 1  # never sent twice
