"""The simulator on its own: served by ``python -m``, and its bookkeeping."""

from __future__ import annotations

import asyncio
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import aiohttp
import pytest

import seedream_async
from seedream_async import EditRequest, EditResult, NotFound, SeedreamClient, Settings
from seedream_async.simulator import Simulator, SimulatorConfig, SimulatorStats
from tests.conftest import API_KEY, FAST, request


async def test_served_alone_by_python_m() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "seedream_async.simulator",
        "--port",
        "0",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bearer k", "User-Agent": "test"}
            async with session.get(f"{url}/api/v1/chat/credit", headers=headers) as resp:
                assert (await resp.json())["code"] == 200
            async with session.get(f"{url}/api/v1/chat/credit") as resp:
                assert resp.status == 200  # aiohttp sends a User-Agent of its own
                assert (await resp.json())["code"] == 401
    finally:
        proc.terminate()
        await proc.wait()


def test_peak_poll_rate() -> None:
    stats = SimulatorStats(poll_times=[0.0, 0.1, 0.2, 1.05, 1.1, 3.0])
    assert stats.peak_poll_rate(1.0) == 3
    assert stats.peak_poll_rate(0.1) == 2
    assert SimulatorStats().peak_poll_rate() == 0


async def test_result_images_are_real_pngs_shaped_like_the_request(tmp_path: Path) -> None:
    """Pipelines that open the images work: `file` says "PNG image data"."""
    async with Simulator(SimulatorConfig()) as sim:
        settings = Settings(allow_private_downloads=True)
        async with SeedreamClient("k", base_url=sim.url, settings=settings) as client:
            for ratio, shape in (("1:1", (64, 64)), ("16:9", (114, 64)), ("3:4", (64, 85))):
                request = EditRequest(
                    prompt="p", image_urls=["https://a.example/x.png"], aspect_ratio=ratio
                )
                task_id = await client.create_task(request)
                (path,) = await client.download(_result(sim, task_id), tmp_path)
                data = path.read_bytes()
                assert data.startswith(b"\x89PNG\r\n\x1a\n")
                assert data[12:16] == b"IHDR"
                assert struct.unpack(">II", data[16:24]) == shape
                assert len(data) == sim.config.image_size
                assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]


def _result(sim: Simulator, task_id: str) -> EditResult:
    record = sim.record(task_id)
    return EditResult(task_id=task_id, urls=record.result_urls, record=record)


def test_version() -> None:
    assert seedream_async.__version__ != "0+unknown"
    out = subprocess.run(
        [sys.executable, "-m", "seedream_async.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"seedream-async {seedream_async.__version__}"


async def test_finished_tasks_are_forgotten_after_their_ttl() -> None:
    """A long run keeps the simulator bounded: tasks (and their counts) go after a TTL."""
    async with (
        Simulator(SimulatorConfig(task_ttl=0.2)) as sim,
        SeedreamClient(API_KEY, base_url=sim.url, settings=FAST) as client,
    ):
        first = await client.edit(request(0))
        assert first.task_id in sim.tasks
        await asyncio.sleep(0.3)
        await client.edit(request(1))  # each create sweeps what expired
        assert first.task_id not in sim.tasks
        assert len(sim.tasks) == 1
        assert len(sim.stats.tasks_per_request) == 1
        assert sim.stats.tasks_created == 2
        with pytest.raises(NotFound):
            await client.get_task(first.task_id)
