"""Issue 9 §3-§6 and §9: a hostile service, hostile callers and careless input, from outside."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp import web
from yarl import URL

from seedream_async import (
    CallbackReceiver,
    DownloadError,
    EditRequest,
    EditResult,
    InvalidRequest,
    SeedreamClient,
    ServerError,
    Settings,
    TaskState,
    TaskTimeout,
)
from seedream_async._config import InsecureBaseUrl
from seedream_async._downloads import Downloader
from seedream_async._signing import sign
from seedream_async._wire import envelope
from seedream_async.simulator import Simulator, fake_png
from tests.conftest import FAST, ClientFactory, request, until

KEY = b"hmac-key"
NESTED = "[" * 3000 + "]" * 3000  # ~6 KB; Python's json parser gives up with RecursionError


async def serve(app: web.Application, host: str = "127.0.0.1") -> AsyncIterator[URL]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield URL.build(scheme="http", host=host, port=runner.addresses[0][1])
    finally:
        await runner.cleanup()


def signed(task_id: str, *, lower: bool = False) -> dict[str, str]:
    stamp = str(int(time.time()))
    headers = {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": sign(KEY, task_id, stamp)}
    return {k.lower(): v for k, v in headers.items()} if lower else headers


def callback(task_id: str, **data: Any) -> bytes:
    record = {"taskId": task_id, "state": "success", **data}
    return envelope(200, "done", record)


# --- §3: downloads never reach the user's own network -------------------------------------------


async def test_result_urls_on_loopback_are_refused_by_default(
    sim: Simulator, tmp_path: Path
) -> None:
    """The simulator hands out its own 127.0.0.1 URLs: with default settings nothing is
    requested and nothing written (before, the image was fetched and saved)."""
    settings = attrs.evolve(FAST, allow_private_downloads=False)
    async with SeedreamClient("k", base_url=sim.url, settings=settings) as client:
        items = [i async for i in client.edit_many([request(0)], download_to=tmp_path / "img")]
    (item,) = items
    assert item.status == "download_failed"
    assert isinstance(item.error, DownloadError)
    assert "loopback" in item.error.reason
    assert sim.stats.downloads == 0
    assert not list((tmp_path / "img").iterdir())


@pytest.mark.parametrize(
    ("template", "rule"),
    [
        ("http://localhost:{port}/files/{{task_id}}/{{n}}.png", "resolves to a private address"),
        ("http://[::ffff:127.0.0.1]:{port}/files/{{task_id}}/{{n}}.png", "loopback"),
        ("http://[::1]:{port}/x.png", "loopback"),
        ("http://10.20.30.40/x.png", "private"),
        ("http://192.168.1.1/x.png", "private"),
        ("http://169.254.169.254/latest/meta-data", "link-local"),
        ("http://[fe80::1]/x.png", "link-local"),
        ("http://224.0.0.1/x.png", "multicast"),
        ("http://0.0.0.0:{port}/x.png", "unspecified"),
        ("http://240.0.0.1/x.png", "reserved"),
    ],
)
async def test_private_result_hosts_are_refused(
    sim: Simulator, tmp_path: Path, template: str, rule: str
) -> None:
    assert sim.url.port is not None
    sim.config.result_url_template = template.format(port=sim.url.port)
    # A black hole tried would hold the download for minutes: refused, it ends well inside 30 s.
    settings = attrs.evolve(
        FAST,
        allow_private_downloads=False,
        query_attempts=1,
        connect_timeout=600.0,
        download_timeout=600.0,
    )
    async with SeedreamClient("k", base_url=sim.url, settings=settings) as client:
        result = await client.edit(request(0))
        with pytest.raises(DownloadError, match=rule):
            async with asyncio.timeout(30):
                await client.download(result, tmp_path)
    assert sim.stats.downloads == 0
    assert list(tmp_path.iterdir()) == []


async def test_every_redirect_hop_is_checked_again(tmp_path: Path) -> None:
    """A public-looking first hop redirects to a refused address: nothing reaches it."""
    reached: list[str] = []

    async def inner(request: web.Request) -> web.Response:
        reached.append(request.path)
        return web.Response(body=b"secret")

    inner_app = web.Application()
    inner_app.router.add_get("/{tail:.*}", inner)
    async for inner_url in serve(inner_app, host="127.0.0.2"):

        async def outer(_: web.Request, to: URL = inner_url) -> web.Response:
            raise web.HTTPFound(to / "admin")

        outer_app = web.Application()
        outer_app.router.add_get("/{tail:.*}", outer)
        async for outer_url in serve(outer_app):
            # 127.0.0.1 plays the public host; 127.0.0.2 the user's own network.
            def refuse(host: str) -> str | None:
                return "a private address" if host == "127.0.0.2" else None

            settings = Settings(query_attempts=1)
            async with aiohttp.ClientSession() as session:
                downloader = Downloader.for_settings(session, settings, refuse=refuse)
                try:
                    with pytest.raises(DownloadError, match="refused"):
                        await downloader.fetch(outer_url / "img.png", tmp_path, "a.png", "t")
                finally:
                    await downloader.aclose()
    assert reached == []
    assert list(tmp_path.iterdir()) == []


# --- §4: hostile answers end a task cleanly ------------------------------------------------------


async def test_deeply_nested_result_json_never_escapes_raw(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """Before: the receiver answered 500, get_task() raised RecursionError, and the poll died,
    so the task never ended and (max_in_flight=1) nothing else was ever submitted."""
    hostile = True

    def tamper(wire: dict[str, Any]) -> None:
        if hostile and wire["state"] == "success":
            wire["resultJson"] = NESTED

    sim.config.tamper = tamper
    sim.config.latency = (0.05, 0.05)
    receiver = CallbackReceiver()
    client = make_client(callbacks=receiver, max_in_flight=1, task_deadline=1.0)
    with pytest.raises(TaskTimeout):
        await client.edit(request(0))
    assert sim.stats.callbacks_failed > 0  # refused (400), never a 500
    task_id = next(iter(sim.tasks))
    with pytest.raises(ServerError, match=r"does not parse|not JSON"):
        await client.get_task(task_id)
    reply = receiver.handle("POST", "x" * 24, callback(task_id, resultJson=NESTED), {})
    assert reply.status in (400, 404)
    hostile = False
    assert (await client.edit(request(1))).urls  # the slot came back; the poller lives


async def test_a_signed_receiver_checks_the_signature_before_parsing(
    sim: Simulator, make_client: ClientFactory
) -> None:
    sim.config.latency = (5.0, 5.0)
    receiver = CallbackReceiver(hmac_key=KEY)
    client = make_client(callbacks=receiver, safety_poll_after=30.0)
    handle = await client.submit(request(0))
    token = handle.token
    assert token is not None
    hostile = callback(handle.task_id, resultJson=NESTED)
    forged = {"X-Webhook-Timestamp": str(int(time.time())), "X-Webhook-Signature": "AAAA"}
    assert receiver.handle("POST", token, hostile, forged).status == 401
    assert not handle.done()


async def test_hostile_task_ids_never_reach_the_file_system(
    make_client: ClientFactory, sim: Simulator, tmp_path: Path
) -> None:
    client = make_client()
    real = await client.edit(request(0))
    target = tmp_path / "out"
    for task_id in ("../../escaped", "/etc/absolute", "x" * 300, "nul\x00byte", "..", "a/b"):
        result = EditResult(task_id=task_id, urls=real.urls, record=real.record)
        (path,) = await client.download(result, target)
        assert path.parent == target
        assert path.read_bytes() == fake_png(real.task_id, 0, sim.config.image_size)
    assert sorted(p.parent for p in tmp_path.rglob("*") if p.is_file()) == [target] * 12


async def test_a_service_answer_with_a_hostile_task_id_is_typed(
    sim: Simulator, make_client: ClientFactory
) -> None:
    def tamper(wire: dict[str, Any]) -> None:
        wire["taskId"] = "x" * 300

    sim.config.tamper = tamper
    client = make_client()
    task_id = await client.create_task(request(0))
    with pytest.raises(ServerError, match="task id"):
        await client.get_task(task_id)


# --- §5: signed redeliveries are acknowledged ----------------------------------------------------


async def test_signed_duplicate_callbacks_are_acknowledged(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """Before: 50 callbacks, each duplicate refused with 401 (145 failed deliveries)."""
    sim.config.hmac_key = KEY
    sim.config.callback_duplicates = 2
    sim.config.latency = (0.01, 0.05)
    client = make_client(callbacks=CallbackReceiver(hmac_key=KEY), safety_poll_after=30.0)
    await asyncio.gather(*(client.edit(request(n)) for n in range(20)))
    await until(lambda: sim.stats.callbacks_sent == 60)
    assert sim.stats.callbacks_failed == 0
    assert sim.stats.polls == 0


async def test_a_signed_delivery_first_answered_404_is_accepted_on_retry(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """A resuming batch registers its token after the first delivery came."""
    receiver = CallbackReceiver(hmac_key=KEY)
    client = make_client(callbacks=receiver, task_deadline=5.0)
    await client.credits()  # opened: the receiver serves
    token = "resumed-token-0123456789"
    url = receiver.url_for(token)
    body = callback(
        "task_from_a_killed_run",
        resultJson=json.dumps({"resultUrls": ["https://cdn.example/a.png"]}),
    )
    headers = signed("task_from_a_killed_run")
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=headers) as resp:
            assert resp.status == 404
        reconcile = asyncio.create_task(client.reconcile(token, request(0)))
        await until(lambda: client._tracker.lifecycle.has_token(token))  # it now awaits it
        async with session.post(url, data=body, headers=headers) as resp:
            assert resp.status == 200
    handle = await reconcile
    assert handle.task_id == "task_from_a_killed_run"


# --- §6: downloads write only what belongs to the result -----------------------------------------


async def test_a_second_batch_into_the_same_folder_keeps_both(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """Before: the second batch skipped the existing files and reported them as its own."""
    images = tmp_path / "img"
    first = [
        i async for i in make_client().edit_many([request(n) for n in range(3)], download_to=images)
    ]
    first_bytes = {f: f.read_bytes() for i in first for f in i.files}
    second = [
        i async for i in make_client().edit_many([request(n) for n in range(3)], download_to=images)
    ]
    for item in second:
        assert item.ok
        assert item.result is not None
        for n, f in enumerate(item.files):
            assert f not in first_bytes
            assert f.read_bytes() == fake_png(item.result.task_id, n, sim.config.image_size)
    assert all(f.read_bytes() == b for f, b in first_bytes.items())
    assert sim.stats.downloads == 6


async def test_a_rerun_removes_a_killed_downloads_leftover(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    images = tmp_path / "img"
    images.mkdir()
    leftover = images / ".000000_0.png.part"
    leftover.write_bytes(b"half an image")  # what kill -9 mid-download leaves
    items = [i async for i in make_client().edit_many([request(0)], download_to=images)]
    assert items[0].ok
    assert not leftover.exists()
    assert not list(images.glob("*.part"))
    assert not list(images.glob(".*.part"))


async def test_a_trickling_download_is_cut_off(tmp_path: Path) -> None:
    async def trickle(_: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(_)
        for _n in range(6000):  # ten minutes of a trickle
            await response.write(b"x")
            await asyncio.sleep(0.1)
        return response

    app = web.Application()
    app.router.add_get("/slow.png", trickle)
    async for url in serve(app):
        settings = Settings(download_timeout=0.5, query_attempts=1, allow_private_downloads=True)
        async with aiohttp.ClientSession() as session:
            downloader = Downloader(session, settings)
            with pytest.raises(DownloadError, match=r"not complete in 0.5 s"):
                async with asyncio.timeout(30):  # the trickle would last ten minutes
                    await downloader.fetch(url / "slow.png", tmp_path, "slow.png", "t")
    assert list(tmp_path.iterdir()) == []


async def test_one_failed_image_cancels_its_siblings(sim: Simulator, tmp_path: Path) -> None:
    """Before, ``fetch_all`` gathered with no owner: a failed image left its siblings running."""
    hung_up = asyncio.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        try:
            for _ in range(12000):  # ten minutes of a trickle, unless the client goes away
                await response.write(b"x")
                await asyncio.sleep(0.05)
        except ConnectionError:
            hung_up.set()
        return response

    app = web.Application()
    app.router.add_get("/slow.png", slow)
    async for url in serve(app):
        settings = Settings(query_attempts=1, allow_private_downloads=True)
        async with aiohttp.ClientSession() as session:
            downloader = Downloader(session, settings)
            urls = (url / "slow.png", url / "missing.png")
            with pytest.raises(DownloadError, match="HTTP 404"):
                async with asyncio.timeout(30):  # not waiting for the sibling's ten minutes
                    await downloader.fetch_all(urls, tmp_path, "r", owner="t")
            async with asyncio.timeout(5):
                await hung_up.wait()  # the sibling's connection was dropped, not left running
    assert not list(tmp_path.glob("*.png"))
    assert not list(tmp_path.glob(".*.part"))


# --- §9: the rest of the hostile-input review ----------------------------------------------------


async def test_answers_are_size_capped_even_when_compressed() -> None:
    """A 64 MiB answer gzipped to ~64 KiB: refused early, never inflated in memory."""
    bomb = gzip.compress(b'{"code":200,"msg":"ok","data":{"x":"' + b"0" * (64 << 20) + b'"}}')

    async def record_info(_: web.Request) -> web.Response:
        return web.Response(
            body=bomb, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"}
        )

    app = web.Application()
    app.router.add_get("/api/v1/jobs/recordInfo", record_info)
    async for url in serve(app):
        settings = attrs.evolve(FAST, query_attempts=1)
        async with SeedreamClient("k", base_url=url, settings=settings) as client:
            tracemalloc.start()
            try:
                with pytest.raises(ServerError, match="over"):
                    await client.get_task("task_1")
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    assert peak < 16 << 20


async def test_an_answer_nested_half_a_million_deep_is_refused_not_a_crash() -> None:
    """Within ``max_answer_bytes``, 500,000 nested arrays: orjson before 3.9.15 (the speed
    extra) recursed through them and the process died of a stack overflow (CVE-2024-27454)."""
    depth = 500_000
    body = b"[" * depth + b"]" * depth

    async def record_info(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/jobs/recordInfo", record_info)
    async for url in serve(app):
        settings = attrs.evolve(FAST, query_attempts=1)
        assert len(body) <= settings.max_answer_bytes
        async with SeedreamClient("k", base_url=url, settings=settings) as client:
            with pytest.raises(ServerError, match="non-JSON answer"):
                await client.get_task("task_1")


async def test_a_polled_record_of_another_task_is_not_taken(
    sim: Simulator, make_client: ClientFactory
) -> None:
    def tamper(wire: dict[str, Any]) -> None:
        wire["taskId"] = "task_of_someone_else"

    sim.config.tamper = tamper
    with pytest.raises(TaskTimeout):
        await make_client(task_deadline=0.6).edit(request(0))


async def test_a_record_with_an_empty_state_is_polled_again_not_failed(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """A record whose ``state`` is ``""`` is a state we do not know, like any other: polled
    again. (Before, reading it raised ``KeyError``, and the poller ended the paid task with
    "unexpected KeyError while polling".)"""
    blanked = 0

    def blank_the_first_two(wire: dict[str, Any]) -> None:
        nonlocal blanked
        if blanked < 2:
            blanked += 1
            wire["state"] = ""

    sim.config.tamper = blank_the_first_two
    result = await make_client().edit(request(0))
    assert result.record.state is TaskState.SUCCESS
    assert blanked == 2


async def test_receiver_survives_hang_ups_slow_bodies_and_big_apps(
    sim: Simulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    receiver = CallbackReceiver(body_timeout=0.5)
    client = make_client(callbacks=receiver)
    await client.credits()
    url = receiver.url_for("a" * 24)
    assert url.port is not None
    head = (
        f"POST {url.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    caplog.set_level(logging.DEBUG)
    for _ in range(200):  # hang up mid-body
        reader, writer = await asyncio.open_connection("127.0.0.1", url.port)
        writer.write(head + b'{"data": ')
        await writer.drain()
        writer.close()
        await writer.wait_closed()
    reader, writer = await asyncio.open_connection("127.0.0.1", url.port)  # a trickle
    writer.write(head)
    status = b""
    with pytest.raises(ConnectionError):  # noqa: PT012 (the trickle ends when it is cut off)
        async with asyncio.timeout(30):  # cut off after body_timeout, not at the trickle's end
            for _ in range(6000):  # ten minutes of it
                writer.write(b" ")
                await writer.drain()
                if reader.at_eof() or (status := await _peek(reader)):
                    raise ConnectionResetError
                await asyncio.sleep(0.1)
    writer.close()
    assert status.startswith(b"HTTP/1.1 408") or status == b""
    await quiet_spell()  # for anything the receiver would log about the cut connections
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert "Traceback" not in caplog.text


async def quiet_spell() -> None:
    """A moment with nothing to wait for: a test that asserts something was NOT logged has no
    event marking that it never will be; what the server does about a connection it just cut
    runs within a few loop turns, well inside this."""
    await asyncio.sleep(0.1)


async def _peek(reader: asyncio.StreamReader) -> bytes:
    try:
        return await asyncio.wait_for(reader.read(100), 0.001)
    except TimeoutError:
        return b""


async def test_a_mounted_receiver_stops_reading_at_its_own_limit(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """Mounted in an app that allows 100 MiB: the 413 comes after ~64 KiB, not 50 MiB."""
    receiver = CallbackReceiver(host=None, public_url="http://127.0.0.1:1/hooks")
    app = web.Application(client_max_size=100 << 20)
    app.add_subapp("/hooks", receiver.app)
    client = make_client(callbacks=receiver)
    await client.credits()
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(800):  # 50 MiB, at about 16 MiB/s
            sent += 1
            yield b"x" * (64 << 10)
            await asyncio.sleep(0.004)

    async for url in serve(app):
        async with aiohttp.ClientSession() as session:
            target = url / "hooks/seedream/callback" / ("a" * 24)
            try:
                async with session.post(target, data=body()) as resp:
                    status = resp.status
            except aiohttp.ClientError:
                status = 413  # the server answered and closed while we were still sending
    assert status == 413
    assert sent < 400  # it did not wait for the whole 50 MiB


async def test_handle_accepts_lower_case_header_names(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """What ASGI frameworks hand over: before, a correctly signed callback got 401."""
    sim.config.latency = (5.0, 5.0)
    receiver = CallbackReceiver(hmac_key=KEY)
    client = make_client(callbacks=receiver, safety_poll_after=30.0)
    handle = await client.submit(request(0))
    assert handle.token is not None
    body = callback(
        handle.task_id, resultJson=json.dumps({"resultUrls": ["https://a.example/x.png"]})
    )
    reply = receiver.handle("POST", handle.token, body, signed(handle.task_id, lower=True))
    assert reply.status == 200
    assert handle.done()


def test_a_wildcard_receiver_needs_a_public_url() -> None:
    wildcard = "0.0.0.0"  # noqa: S104 (what a user binds to, on purpose)
    with pytest.raises(InvalidRequest, match="public_url"):
        CallbackReceiver(wildcard)
    with pytest.raises(InvalidRequest, match="public_url"):
        CallbackReceiver("::")
    with pytest.raises(InvalidRequest, match="public_url"):
        CallbackReceiver(wildcard, public_url="hooks.example.com")  # no scheme
    CallbackReceiver(wildcard, public_url="https://hooks.example.com")


async def test_forged_callbacks_are_coalesced_into_few_polls(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """Before: 100 forged callbacks with a known token cost 102 recordInfo calls."""
    sim.config.latency = (1.5, 1.5)
    receiver = CallbackReceiver(confirm_with_record_info=True)
    client = make_client(callbacks=receiver, safety_poll_after=30.0)
    handle = await client.submit(request(0))
    assert handle.token is not None
    forged = callback(
        handle.task_id, resultJson=json.dumps({"resultUrls": ["https://evil.example/x.png"]})
    )
    async with aiohttp.ClientSession() as session:
        for _ in range(100):
            async with session.post(receiver.url_for(handle.token), data=forged) as resp:
                assert resp.status == 200
    assert sim.stats.polls <= 3
    result = await handle.result()
    assert result.urls == sim.record(handle.task_id).result_urls  # the truth, not the forgery
    assert sim.stats.polls <= 5


def test_settings_refuse_nan_and_infinity() -> None:
    for field in ("task_deadline", "request_timeout", "visibility_grace", "safety_poll_every"):
        for bad in (float("nan"), float("inf"), -1.0, 0):
            with pytest.raises(InvalidRequest, match=field):
                Settings(**{field: bad})


@pytest.mark.parametrize(
    "image_urls",
    [
        None,
        42,
        {"https://a.example/x.png": 1},
        ["https://a.example/x\n.png"],
        ["https://a.example/ x.png"],
    ],
)
def test_edit_request_refuses_careless_image_urls(image_urls: Any) -> None:
    with pytest.raises(InvalidRequest, match="image_urls"):
        EditRequest(prompt="p", image_urls=image_urls)


def test_an_api_key_with_a_newline_is_refused_at_construction() -> None:
    for key in ("abc\r\nX-Evil: 1", "ab\ncd", "key\x00", "tab\tkey"):
        with pytest.raises(InvalidRequest, match="api_key"):
            SeedreamClient(key)


def test_a_plain_http_base_url_warns_that_the_key_travels_in_clear() -> None:
    with pytest.warns(InsecureBaseUrl, match="clear"):
        SeedreamClient("k", base_url="http://api.example.com")
    SeedreamClient("k", base_url="http://127.0.0.1:8080")  # the simulator: no warning
