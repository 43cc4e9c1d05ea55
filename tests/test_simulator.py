"""The simulator on its own: served by ``python -m``, and its bookkeeping."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp

from seedream_async.simulator import SimulatorStats


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
