"""Shared fixtures: the simulator on a real loopback port and clients pointed at it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from seedream_async import (
    CallbackReceiver,
    EditRequest,
    Hook,
    SeedreamClient,
)
from seedream_async.simulator import Simulator, SimulatorConfig
from seedream_async.testing import TEST_SETTINGS
from tests.redis_server import RedisServer

API_KEY = "test-key"

#: Settings that keep end-to-end tests fast: the plugin's (what users' tests get), with the
#: safety net sooner and the default deadline.
FAST = attrs.evolve(
    TEST_SETTINGS, safety_poll_after=0.5, safety_poll_every=0.2, task_deadline=900.0
)


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until ``predicate()`` holds: for state kept by another party (a simulator)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 (the state has no event to wait on)
            await asyncio.sleep(0.002)


def request(n: int = 0) -> EditRequest:
    """A valid request, distinct per ``n``."""
    return EditRequest(prompt=f"edit number {n}", image_urls=[f"https://img.example/{n}.png"])


@pytest.fixture
def sim_config() -> SimulatorConfig:
    return SimulatorConfig(seed=1234)


@pytest.fixture
async def sim(sim_config: SimulatorConfig) -> AsyncIterator[Simulator]:
    async with Simulator(sim_config) as simulator:
        yield simulator


ClientFactory = Callable[..., SeedreamClient]


@pytest.fixture
async def make_client(sim: Simulator) -> AsyncIterator[ClientFactory]:
    """Build clients against the simulator; every one is closed after the test."""
    made: list[SeedreamClient] = []

    def factory(
        *,
        callbacks: bool | CallbackReceiver = False,
        hooks: Sequence[Hook] = (),
        **settings: Any,
    ) -> SeedreamClient:
        receiver = CallbackReceiver() if callbacks is True else callbacks or None
        client = SeedreamClient(
            API_KEY,
            base_url=sim.url,
            callbacks=receiver,
            settings=attrs.evolve(FAST, **settings),
            hooks=hooks,
        )
        made.append(client)
        return client

    yield factory
    for client in made:
        await client.aclose()
    await asyncio.sleep(0)  # let cancelled tasks finish unwinding
    assert sdk_tasks() == [], "an SDK task outlived its client's aclose()"


def sdk_tasks() -> list[asyncio.Task[object]]:
    """Tasks running SDK code (the simulator's own excluded), other than the caller."""
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        filename = code.co_filename if code is not None else ""
        sdk = "seedream_async" in filename and not filename.endswith("simulator.py")
        if task.get_name().startswith("seedream") or sdk:
            found.append(task)
    return found


@pytest.fixture
async def virtual_clock() -> AsyncIterator[Callable[[float], None]]:
    """Replace the running loop's clock with one the test advances by hand."""
    loop = asyncio.get_running_loop()
    now = [loop.time()]
    original = loop.time
    loop.time = lambda: now[0]  # type: ignore[method-assign]

    def advance(seconds: float) -> None:
        now[0] += seconds

    yield advance
    loop.time = original  # type: ignore[method-assign]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real Redis for the session; tests keep apart by namespace."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of this test's own, to stop and restart."""
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


_namespaces = itertools.count()


@pytest.fixture
def namespace() -> str:
    return f"test{next(_namespaces)}"


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    """Chromium for the report tests, installed (apt-get) when missing: never skipped."""
    from tests.browser import chromium_binary as find_or_install  # noqa: PLC0415 (only here)

    return find_or_install()
