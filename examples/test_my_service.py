"""
Testing your own service with the plugin (``pip install 'seedream-async[testing]'``).

``make_thumbnail`` stands for your code; the fixtures come from the ``pytest11`` entry point,
with nothing to import or wire. This project's CI runs this file.
"""

from __future__ import annotations

import pytest

from seedream_async import SeedreamClient, TaskFailed
from seedream_async.simulator import Simulator


async def make_thumbnail(client: SeedreamClient, image_url: str) -> str:
    """Your service: one edit, the first result URL back."""
    result = await client.edit(prompt="a square thumbnail", image_urls=[image_url])
    return str(result.urls[0])


async def test_thumbnail(seedream_client: SeedreamClient, seedream_simulator: Simulator) -> None:
    url = await make_thumbnail(seedream_client, "https://example.com/cat.png")
    assert url.startswith(str(seedream_simulator.url))
    assert seedream_simulator.stats.tasks_created == 1


@pytest.mark.seedream(failure_rate=1.0)
async def test_thumbnail_when_the_model_fails(seedream_client: SeedreamClient) -> None:
    with pytest.raises(TaskFailed):
        await make_thumbnail(seedream_client, "https://example.com/cat.png")


@pytest.mark.seedream(callback_drop_rate=1.0, latency=(0.05, 0.1))
async def test_thumbnail_when_callbacks_are_lost(
    seedream_client: SeedreamClient, seedream_simulator: Simulator
) -> None:
    await make_thumbnail(seedream_client, "https://example.com/cat.png")  # a safety poll saves it
    assert seedream_simulator.stats.polls >= 1


async def test_thumbnail_under_a_rate_limit(
    seedream_polling_client: SeedreamClient, seedream_simulator: Simulator
) -> None:
    seedream_simulator.config.create_limit = (1, 0.2)  # knobs change at any time
    seedream_simulator.config.retry_after = 0.25
    for _ in range(2):
        await make_thumbnail(seedream_polling_client, "https://example.com/cat.png")
    assert seedream_simulator.stats.tasks_created == 2
