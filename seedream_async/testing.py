"""
A pytest plugin for your own tests: the simulator on loopback and a client wired to it.

Installed with the ``testing`` extra (``pip install 'seedream-async[testing]'``, which
brings pytest-asyncio); pytest loads it through the ``pytest11`` entry point, so there is
nothing to import. A service test is three lines::

    async def test_thumbnail(seedream_client, seedream_simulator):
        await my_service.thumbnail(seedream_client, "https://example.com/cat.png")
        assert seedream_simulator.stats.tasks_created == 1

Fixtures:

- ``seedream_simulator``: a running ``Simulator`` (``.url``, ``.stats``, ``.config``;
  change its knobs at any time, even mid-test).
- ``seedream_client``: a ``SeedreamClient`` pointed at it with a callback receiver on
  loopback and test settings (polls in milliseconds, no 60 s safety-poll wait); closed
  after the test.
- ``seedream_polling_client``: the same without callbacks (polling mode).
- ``seedream_settings``: those test ``Settings``; override the fixture to change them.
- ``seedream_simulator_config``: the ``SimulatorConfig`` the simulator starts with;
  override it, or mark a test with ``@pytest.mark.seedream(failure_rate=0.5, ...)``
  (any ``SimulatorConfig`` field: ``latency``, ``failure_rate``, ``callback_drop_rate``,
  ``create_limit``, ``credits``...).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_asyncio

from ._client import SeedreamClient
from ._config import PollSchedule, Settings
from ._receiver import CallbackReceiver
from .simulator import Simulator, SimulatorConfig

__all__ = ["TEST_SETTINGS"]

#: Settings for tests against the simulator: fast polls and retries, short safety polls.
TEST_SETTINGS = Settings(
    poll_schedule=PollSchedule(steps=((float("inf"), 0.05),), jitter=0.1),
    backoff_initial=0.01,
    backoff_max=0.05,
    safety_poll_after=1.0,
    safety_poll_every=0.5,
    visibility_grace=5.0,
    request_timeout=5.0,
    query_rate=200,
    create_rate=1000,
    create_period=1.0,
    task_deadline=60.0,
    allow_private_downloads=True,  # the simulator serves result images on loopback
)

_API_KEY = "seedream-test-key"  # the simulator accepts any non-empty key


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``seedream`` marker."""
    config.addinivalue_line(
        "markers",
        "seedream(**knobs): SimulatorConfig fields for the seedream_simulator fixture",
    )


@pytest.fixture
def seedream_simulator_config(request: pytest.FixtureRequest) -> SimulatorConfig:
    """The simulator's starting knobs: defaults, then a ``seedream`` marker's values."""
    config = SimulatorConfig(seed=1234)
    for marker in reversed(list(request.node.iter_markers("seedream"))):
        if marker.args:
            raise pytest.UsageError("@pytest.mark.seedream takes keyword arguments only")
        known = {f.name for f in attrs.fields(SimulatorConfig)}
        if unknown := sorted(set(marker.kwargs) - known):
            raise pytest.UsageError(f"@pytest.mark.seedream: no simulator knob {unknown}")
        config = attrs.evolve(config, **marker.kwargs)
    return config


@pytest.fixture
def seedream_settings() -> Settings:
    """The client settings of ``seedream_client``."""
    return TEST_SETTINGS


@pytest_asyncio.fixture
async def seedream_simulator(
    seedream_simulator_config: SimulatorConfig,
) -> AsyncIterator[Simulator]:
    """A running simulator on a free loopback port."""
    async with Simulator(seedream_simulator_config) as simulator:
        yield simulator


async def _client(
    simulator: Simulator, settings: Settings, **options: Any
) -> AsyncIterator[SeedreamClient]:
    async with SeedreamClient(
        _API_KEY, base_url=simulator.url, settings=settings, **options
    ) as client:
        yield client


@pytest_asyncio.fixture
async def seedream_client(
    seedream_simulator: Simulator, seedream_settings: Settings
) -> AsyncIterator[SeedreamClient]:
    """A client wired to the simulator, with callbacks on loopback."""
    async for client in _client(
        seedream_simulator, seedream_settings, callbacks=CallbackReceiver()
    ):
        yield client


@pytest_asyncio.fixture
async def seedream_polling_client(
    seedream_simulator: Simulator, seedream_settings: Settings
) -> AsyncIterator[SeedreamClient]:
    """A client wired to the simulator, in polling mode."""
    async for client in _client(seedream_simulator, seedream_settings):
        yield client
