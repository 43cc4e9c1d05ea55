"""The pytest plugin's hook and fixtures (``seedream_async.testing`` documents them)."""

from __future__ import annotations

import difflib
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
import pytest_asyncio

from ._client import SeedreamClient
from ._config import TEST_SETTINGS, Settings
from ._receiver import CallbackReceiver
from .simulator import Simulator, SimulatorConfig

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
        if unknown := sorted(set(marker.kwargs) - _KNOBS):
            raise pytest.UsageError(f"@pytest.mark.seedream: no simulator knob {_hints(unknown)}")
        config = attrs.evolve(config, **marker.kwargs)
    return config


_KNOBS = frozenset(f.name for f in attrs.fields(SimulatorConfig))


def _hints(unknown: list[str]) -> str:
    """The misspelt knobs, each with the closest real one (``failure_rat``: ``failure_rate``)."""
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, _KNOBS, n=1)
        named.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return ", ".join(named)


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
