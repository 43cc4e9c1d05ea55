"""
The programs in ``examples/`` run as their users would run them: real processes, against
the simulator on loopback (and a real Redis for the fleet one).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

from seedream_async.simulator import Simulator
from tests.conftest import until
from tests.redis_server import RedisServer, free_port

EXAMPLES = Path(__file__).parent.parent / "examples"

pytestmark = pytest.mark.slow


def _env(sim: Simulator, **extra: str) -> dict[str, str]:
    env = {**os.environ, "APIKLEY_API_KEY": "demo", "APIKLEY_BASE_URL": str(sim.url), **extra}
    env.pop("SEEDREAM_REDIS_URL", None)
    env.update(extra)
    return env


async def _listening(port: int, proc: asyncio.subprocess.Process, within: float = 30) -> None:
    async with asyncio.timeout(within):
        while True:
            if proc.returncode is not None:
                raise AssertionError(f"the example exited with {proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                await asyncio.sleep(0.05)


async def _serve_and_stop(argv: list[str], port: int, sim: Simulator, path: str, **env: str):
    """Start a service example, edit through it, SIGTERM it with requests in flight."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *argv, env=_env(sim, **env), stderr=asyncio.subprocess.PIPE
    )
    try:
        await _listening(port, proc)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:

            async def one(n: int) -> tuple[int, dict[str, object]]:
                query = path.format(n=n)
                async with http.post(query) as response:
                    return response.status, await response.json()

            first = await asyncio.gather(*(one(n) for n in range(5)))
            assert [status for status, _ in first] == [200] * 5, first
            assert sim.stats.callbacks_sent == 5  # resolved by callbacks through the mount
            sim.config.latency = (1.0, 1.0)
            calls = [asyncio.create_task(one(n)) for n in range(5, 10)]
            await until(lambda: sim.stats.tasks_created == 10, within=30)
            loop = asyncio.get_running_loop()
            stopped_at = loop.time()
            proc.send_signal(signal.SIGTERM)
            late = await asyncio.gather(*calls)
            took = loop.time() - stopped_at
        assert [status for status, _ in late] == [200] * 5, late
        assert took < 20, took  # polled at once, not after the 60 s safety poll
        async with asyncio.timeout(30):
            # uvicorn re-raises the signal once shut down gracefully; aiohttp exits 0.
            assert await proc.wait() in (0, -signal.SIGTERM)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_aiohttp_service(sim: Simulator) -> None:
    port = free_port()
    argv = [str(EXAMPLES / "aiohttp_service.py"), "--port", str(port)]
    await _serve_and_stop(argv, port, sim, "/edit?prompt=p{n}&image=https://a.example/{n}.png")


async def test_fastapi_service(sim: Simulator) -> None:
    port = free_port()
    argv = [str(EXAMPLES / "fastapi_service.py"), "--port", str(port)]
    public = f"http://127.0.0.1:{port}"
    path = "/edit?prompt=p{n}&image_url=https://a.example/{n}.png"
    await _serve_and_stop(argv, port, sim, path, PUBLIC_URL=public)


async def _run(argv: list[str], env: dict[str, str]) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *argv,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(120):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_batch_with_journal(sim: Simulator, tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.jsonl"
    lines = (EXAMPLES / "manifest.jsonl").read_text().splitlines()[:4]
    manifest.write_text("\n".join(lines) + "\n")
    argv = [str(EXAMPLES / "batch_with_journal.py"), str(manifest), str(tmp_path / "out")]
    code, out = await _run(argv, _env(sim))
    assert code == 0, out
    assert "4 succeeded" in out
    images = sorted((tmp_path / "out" / "images").iterdir())
    assert len([p for p in images if not p.name.startswith(".")]) == 4
    code, out = await _run(argv, _env(sim))  # the rerun: everything from the journal
    assert code == 0, out
    assert sim.stats.tasks_created == 4


async def test_two_processes_share_one_account(sim: Simulator, redis_server: RedisServer) -> None:
    sim.config.create_limit = (4, 1.0)  # the account's window, enforced by the "service"
    argv = [str(EXAMPLES / "two_processes.py"), "--edits", "6", "--rate", "4"]
    code, out = await _run(argv, _env(sim, SEEDREAM_REDIS_URL=redis_server.url))
    assert code == 0, out
    assert "worker-a: 6 edits" in out
    assert "worker-b: 6 edits" in out
    assert sim.stats.tasks_created == 12
    assert sim.stats.rate_limited == 0


def test_the_manifest_is_valid() -> None:
    for line in (EXAMPLES / "manifest.jsonl").read_text().splitlines():
        json.loads(line)
