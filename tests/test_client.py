"""Client construction, ownership and lifecycle."""

from __future__ import annotations

import logging

import aiohttp
import pytest

from seedream_async import (
    AuthenticationError,
    ClientAlreadyOpen,
    ClientClosed,
    InvalidRequest,
    SeedreamClient,
)
from seedream_async.simulator import Simulator
from tests.conftest import API_KEY, FAST, request


def test_missing_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("APIKLEY_API_KEY", raising=False)
    with pytest.raises(InvalidRequest, match="APIKLEY_API_KEY") as info:
        SeedreamClient()
    assert info.value.field == "api_key"
    with pytest.raises(InvalidRequest):
        SeedreamClient("   ")


async def test_environment_fallbacks(sim: Simulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIKLEY_API_KEY", "from-env")
    monkeypatch.setenv("APIKLEY_BASE_URL", str(sim.url))
    sim.config.api_key = "from-env"
    async with SeedreamClient(settings=FAST) as client:
        assert client.base_url == sim.url
        assert await client.credits() > 0


def test_bad_base_url() -> None:
    with pytest.raises(InvalidRequest, match="base_url"):
        SeedreamClient("k", base_url="ftp://nowhere")


async def test_key_never_shown(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    secret = "sk-very-secret-value"
    sim.config.api_key = "another"
    caplog.set_level(logging.DEBUG)
    async with SeedreamClient(secret, base_url=sim.url, settings=FAST) as client:
        assert secret not in repr(client)
        with pytest.raises(AuthenticationError) as info:
            await client.create_task(request(1))
    assert secret not in str(info.value)
    assert secret not in repr(info.value)
    assert secret not in caplog.text


async def test_callers_session_is_not_closed(sim: Simulator) -> None:
    async with aiohttp.ClientSession() as session:
        client = SeedreamClient(API_KEY, base_url=sim.url, session=session, settings=FAST)
        async with client:
            await client.credits()
        assert not session.closed


async def test_own_session_closed_and_close_idempotent(sim: Simulator) -> None:
    client = SeedreamClient(API_KEY, base_url=sim.url, settings=FAST)
    await client.credits()
    await client.aclose()
    await client.aclose()
    assert "closed" in repr(client)
    with pytest.raises(ClientClosed):
        await client.credits()
    with pytest.raises(ClientClosed):
        await client.submit(request(1))
    with pytest.raises(ClientClosed):
        client.resume("task_x")


async def test_unclosed_client_warns(sim: Simulator) -> None:
    client = SeedreamClient(API_KEY, base_url=sim.url, settings=FAST)
    await client.credits()
    with pytest.warns(ResourceWarning, match="unclosed"):
        client.__del__()  # what the garbage collector would call
    await client.aclose()
    client.__del__()  # closed: silent


async def test_bad_arguments_before_http(sim: Simulator) -> None:
    async with SeedreamClient(API_KEY, base_url=sim.url, settings=FAST) as client:
        with pytest.raises(InvalidRequest):
            await client.get_task("")
        with pytest.raises(InvalidRequest):
            await client.submit("not a request")  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="image_urls"):
            await client.edit(prompt="p", image_urls=["file:///etc/passwd"])
        with pytest.raises(InvalidRequest):
            await client.edit()
        with pytest.raises(InvalidRequest):
            await client.edit(request(1), prompt="p")
    assert sim.stats.create_requests == 0


async def test_a_second_async_with_on_an_open_client_is_refused(sim: Simulator) -> None:
    """As httpx: one ``async with`` owns a client; a nested one would close it under the first."""
    async with SeedreamClient(API_KEY, base_url=sim.url, settings=FAST) as client:
        with pytest.raises(ClientAlreadyOpen, match="async with"):
            async with client:
                pytest.fail("entered twice")
        assert await client.credits() > 0  # the first 'async with' still owns an open client
    with pytest.raises(ClientClosed):
        async with client:
            pytest.fail("entered after close")
