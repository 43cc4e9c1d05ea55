"""The callback receiver faces the internet: hostile requests change nothing."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from seedream_async import CallbackReceiver, InvalidRequest, TaskHandle
from seedream_async._signing import sign
from seedream_async._wire import envelope, record_to_wire
from seedream_async.simulator import Simulator
from tests.conftest import ClientFactory, request

KEY = b"webhook-secret"


def callback_body(sim: Simulator, task_id: str, **overrides: Any) -> bytes:
    data = {**record_to_wire(sim.record(task_id)), **overrides}
    return envelope(200, "ok", data)


def signed(task_id: str, key: bytes = KEY, age: float = 0.0) -> dict[str, str]:
    stamp = str(int(time.time() - age))
    return {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": sign(key, task_id, stamp)}


async def pending_pair(sim: Simulator, make_client: ClientFactory, **kw: Any) -> list[TaskHandle]:
    """Two accepted tasks whose real callbacks come in a second (time for hostile requests)."""
    sim.config.latency = (1.0, 1.0)
    client = make_client(safety_poll_after=30.0, **kw)
    return [await client.submit(request(i)) for i in range(2)]


def url_of(sim: Simulator, handle: TaskHandle) -> URL:
    url = sim.tasks[handle.task_id].callback_url
    assert url is not None
    return url


async def test_hostile_requests_are_refused(
    sim: Simulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    first, second = await pending_pair(sim, make_client, callbacks=True)
    url = url_of(sim, first)
    base = url.parent
    forged = callback_body(sim, second.task_id)
    finished = callback_body(
        sim,
        first.task_id,
        state="success",
        resultJson='{"resultUrls":["https://evil.example/x.png"]}',
    )
    cases: list[tuple[str, URL, bytes, int]] = [
        ("POST", base / "no-such-token", finished, 404),
        ("POST", url, forged, 400),  # a valid token with another task's id
        ("POST", url, b"{not json", 400),
        ("POST", url, b"[]", 400),
        ("POST", url, json.dumps({"code": 200, "data": {"taskId": first.task_id}}).encode(), 400),
        ("POST", url, b"x" * (64 * 1024 + 1), 413),
        ("GET", url, b"", 405),
        ("PUT", url, finished, 405),
        ("DELETE", url, b"", 405),
    ]
    async with aiohttp.ClientSession() as session:
        for method, target, body, status in cases:
            async with session.request(method, target, data=body) as resp:
                assert resp.status == status, (method, target.name, body[:40])
        async with session.post(
            url, data=b"x" * 200_000, headers={"Content-Length": "200000"}
        ) as resp:
            assert resp.status == 413
    assert not first.done()
    assert not second.done()
    for handle in (first, second):
        result = await handle.result()
        assert result.urls == sim.record(handle.task_id).result_urls  # the real ones
    token = url.name
    assert token not in caplog.text
    assert "500" not in {r.levelname for r in caplog.records}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_forged_callback_with_right_token_is_checked_when_asked(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """Unsigned callbacks can be forged by whoever learns a URL: confirm before trusting."""
    receiver = CallbackReceiver(confirm_with_record_info=True)
    (handle, _) = await pending_pair(sim, make_client, callbacks=receiver)
    evil = callback_body(
        sim,
        handle.task_id,
        state="success",
        resultJson='{"resultUrls":["https://evil.example/x.png"]}',
    )
    async with (
        aiohttp.ClientSession() as session,
        session.post(url_of(sim, handle), data=evil) as r,
    ):
        assert r.status == 200
    result = await handle.result()
    assert result.urls == sim.record(handle.task_id).result_urls
    assert all(u.host != "evil.example" for u in result.urls)


async def test_signed_callbacks(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.hmac_key = KEY
    sim.config.latency = (0.01, 0.02)
    client = make_client(callbacks=CallbackReceiver(hmac_key=KEY), safety_poll_after=30.0)
    results = await asyncio.gather(*(client.edit(request(i)) for i in range(10)))
    assert len(results) == 10
    assert sim.stats.polls == 0
    assert sim.stats.callbacks_failed == 0


async def test_bad_signatures_refused(sim: Simulator, make_client: ClientFactory) -> None:
    receiver = CallbackReceiver(hmac_key=KEY)
    first, second = await pending_pair(sim, make_client, callbacks=receiver)
    url = url_of(sim, first)
    body = callback_body(sim, first.task_id, state="success")
    good = signed(first.task_id)
    refused = [
        {},
        signed(first.task_id, key=b"wrong"),
        signed(first.task_id, age=301),
        signed(first.task_id, age=-301),
        signed(second.task_id),  # a real signature, for another task
        {**good, "X-Webhook-Timestamp": "soon"},
        {**good, "X-Webhook-Signature": ""},
    ]
    async with aiohttp.ClientSession() as session:
        for headers in refused:
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 401, headers
        assert not first.done()
        async with session.post(url, data=body, headers=good) as resp:
            assert resp.status == 200
        # A redelivery of the accepted callback is acknowledged (senders retry what fails)...
        async with session.post(url, data=body, headers=good) as resp:
            assert resp.status == 200
        assert first.done()
        assert not second.done()
        assert (await first.result()).task_id == first.task_id
        # ...but its signature opens no other task's door.
        async with session.post(url_of(sim, second), data=body, headers=good) as resp:
            assert resp.status in (400, 401)
        assert not second.done()


async def test_service_signed_callbacks_with_wrong_key_fall_back_to_polls(
    sim: Simulator, make_client: ClientFactory
) -> None:
    sim.config.hmac_key = b"other"
    sim.config.latency = (0.01, 0.02)
    client = make_client(callbacks=CallbackReceiver(hmac_key=KEY), safety_poll_after=0.2)
    result = await client.edit(request(0))
    assert result.urls == sim.record(result.task_id).result_urls
    assert sim.stats.callbacks_failed > 0
    assert sim.stats.polls >= 1


async def health(_: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_mounted_in_an_existing_app(sim: Simulator, make_client: ClientFactory) -> None:
    """A service mounts the receiver in its own aiohttp app; the client starts no server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    receiver = CallbackReceiver(host=None, public_url=f"http://127.0.0.1:{port}/hooks")
    app = web.Application()
    app.router.add_get("/health", health)
    app.add_subapp("/hooks", receiver.app)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    try:
        sim.config.latency = (0.01, 0.02)
        client = make_client(callbacks=receiver, safety_poll_after=30.0)
        result = await client.edit(request(0))
        assert sim.stats.polls == 0
        assert str(sim.tasks[result.task_id].callback_url).startswith(
            f"http://127.0.0.1:{port}/hooks/seedream/callback/"
        )
        assert not receiver.running
    finally:
        await runner.cleanup()


async def test_framework_neutral_handler(sim: Simulator, make_client: ClientFactory) -> None:
    receiver = CallbackReceiver(host=None, public_url="https://hooks.example/cb")
    sim.config.callback_drop_rate = 1.0
    sim.config.latency = (0.05, 0.05)
    client = make_client(callbacks=receiver, safety_poll_after=30.0)
    handle = await client.submit(request(0))
    token = url_of(sim, handle).name
    assert str(url_of(sim, handle)).startswith("https://hooks.example/cb/seedream/callback/")
    await asyncio.sleep(0.06)
    body = callback_body(sim, handle.task_id)
    assert receiver.handle("GET", token, body, {}).status == 405
    assert receiver.handle("POST", "nope", body, {}).status == 404
    reply = receiver.handle("POST", token, body, {})
    assert (reply.status, json.loads(reply.body)) == (200, {"code": 200, "msg": "success"})
    assert (await handle.result()).task_id == handle.task_id
    assert receiver.handle("POST", token, body, {}).status == 200  # a duplicate: acknowledged


def test_receiver_arguments() -> None:
    with pytest.raises(InvalidRequest, match="public_url"):
        CallbackReceiver(host=None)
    with pytest.raises(InvalidRequest, match="path"):
        CallbackReceiver(path="no-slash")
    assert "secret" not in repr(CallbackReceiver(hmac_key="secret"))


async def test_one_receiver_one_client(sim: Simulator, make_client: ClientFactory) -> None:
    receiver = CallbackReceiver()
    await make_client(callbacks=receiver).credits()
    with pytest.raises(InvalidRequest, match="another client"):
        await make_client(callbacks=receiver).credits()


async def exchange(port: int, target: str, body: bytes, expect: str | None = None) -> list[int]:
    """One raw HTTP/1.1 POST (any request target, any Expect); the statuses answered."""
    async with asyncio.timeout(5):  # a 100 Continue that never comes fails, not hangs
        return await _exchange(port, target, body, expect)


async def _exchange(port: int, target: str, body: bytes, expect: str | None) -> list[int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = (
        f"POST {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        + (f"Expect: {expect}\r\n" if expect else "")
        + "Connection: close\r\n\r\n"
    )
    writer.write(head.encode())
    statuses = []
    if expect == "100-continue":  # the body only once the server asks for it
        statuses.append(int((await reader.readline()).split()[1]))
        assert await reader.readline() == b"\r\n"
    writer.write(body)
    statuses.append(int((await reader.readline()).split()[1]))
    writer.close()
    await writer.wait_closed()
    return statuses


async def test_the_receivers_own_server_routes_as_a_mounted_app_does(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """Request targets the way a proxy or an odd sender writes them: the token is found
    (query, percent-encoding, absolute form) or the answer is 404; Expect is honoured."""
    receiver = CallbackReceiver()
    first, second = await pending_pair(sim, make_client, callbacks=receiver)
    url = url_of(sim, first)
    assert url.port is not None
    token, path = url.name, url.path
    forged = callback_body(sim, second.task_id)  # on first's token: 400 once routed there
    encoded = path[: -len(token)] + "".join(f"%{ord(c):02X}" for c in token)
    cases = {
        "/": 404,
        "/seedream/callback": 404,
        "/seedream/callback/": 404,
        path + "/": 404,
        path + "/more": 404,
        path.replace("/callback/", "/callbackx/"): 404,
        path + "x": 404,  # a token nobody issued
        path: 400,
        path + "?from=proxy": 400,
        encoded: 400,
        f"http://127.0.0.1:{url.port}{path}": 400,
    }
    for target, status in cases.items():
        assert await exchange(url.port, target, forged) == [status], target
    assert await exchange(url.port, path, forged, expect="100-continue") == [100, 400]
    assert (await exchange(url.port, path, forged, expect="something-else"))[-1] == 417
    assert not first.done()
    assert (await first.result()).urls == sim.record(first.task_id).result_urls
