"""
The floor: a bare aiohttp loop doing the SDK's work with nothing else.

One createTask POST per task over one ClientSession, a future per task registered before the
POST, an embedded aiohttp server whose callback handler resolves it, concurrency bounded by a
semaphore over a lazy producer. The same shape as in ``shared/reference/PERFORMANCE.md``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

HEADERS = {
    "Authorization": "Bearer bench",
    "User-Agent": "bench-baseline",
    "Content-Type": "application/json",
}


class Baseline:
    """A raw client: ``await start()``, then ``await run(n, in_flight)``."""

    def __init__(self, service: URL) -> None:
        self.create_url = service / "api/v1/jobs/createTask"
        self.futures: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.runner: web.AppRunner | None = None
        self.session: aiohttp.ClientSession | None = None
        self.callback_base = URL()
        self.answered = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/cb/{token}", self.callback)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        port = self.runner.addresses[0][1]
        self.callback_base = URL(f"http://127.0.0.1:{port}/cb")
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))

    async def close(self) -> None:
        if self.session:
            await self.session.close()
        if self.runner:
            await self.runner.cleanup()

    async def callback(self, request: web.Request) -> web.Response:
        data = json.loads(await request.read())
        future = self.futures.pop(request.match_info["token"], None)
        if future is not None and not future.done():
            future.set_result(data)
        return web.json_response({"code": 200, "msg": "success"})

    async def one(self, n: int, sending: asyncio.Semaphore | None = None) -> dict[str, Any]:
        """One task; ``sending`` bounds how many createTask are out at once, if given."""
        token = f"t{n}"
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.futures[token] = future  # before sending: the callback may come first
        if sending is None:
            await self._send(n, token)
        else:
            async with sending:
                await self._send(n, token)
        self.answered += 1
        return await future  # only the token's future stays alive while the task is parked

    async def _send(self, n: int, token: str) -> None:
        assert self.session is not None
        body = json.dumps(
            {
                "model": "seedream/4.5-edit",
                "callBackUrl": str(self.callback_base / token),
                "input": {
                    "prompt": f"edit number {n}",
                    "image_urls": [f"https://img.example/{n}.png"],
                    "aspect_ratio": "1:1",
                    "quality": "basic",
                },
            }
        )
        async with self.session.post(self.create_url, data=body, headers=HEADERS) as resp:
            answer = json.loads(await resp.read())
            assert answer["code"] == 200, answer

    async def run(self, n: int, in_flight: int) -> None:
        await bounded(self.one, n, in_flight)


async def bounded(work: Callable[[int], Awaitable[object]], n: int, in_flight: int) -> None:
    """Run ``work(i)`` for i in range(n), at most ``in_flight`` at once, from a lazy producer."""
    slots = asyncio.Semaphore(in_flight)
    done = asyncio.Event()
    left = n
    failures: list[Exception] = []

    async def guarded(i: int) -> None:
        nonlocal left
        try:
            await work(i)
        except Exception as e:  # a failed task must fail the run, not be measured
            failures.append(e)
        finally:
            slots.release()
            left -= 1
            if left == 0:
                done.set()

    tasks = set()
    for i in range(n):
        await slots.acquire()
        task = asyncio.create_task(guarded(i))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await done.wait()
    if failures:
        raise RuntimeError(f"{len(failures)} of {n} tasks failed") from failures[0]
