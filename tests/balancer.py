"""A small round-robin load balancer on loopback, in front of the replicas' receivers."""

from __future__ import annotations

import itertools

import aiohttp
from aiohttp import web
from yarl import URL


class Balancer:
    """Forwards each request to the next replica; one that refuses the connection is skipped."""

    def __init__(self) -> None:
        self.targets: list[URL] = []
        self.hits: list[int] = []
        self.app = web.Application(client_max_size=1 << 20)
        self.app.router.add_route("*", "/{tail:.*}", self._forward)
        self._turn = itertools.count()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = URL()

    def add(self, target: URL) -> None:
        self.targets.append(target)
        self.hits.append(0)

    async def start(self) -> URL:
        self._session = aiohttp.ClientSession()
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        port = self._runner.addresses[0][1]
        self.url = URL.build(scheme="http", host="127.0.0.1", port=port)
        return self.url

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.Response:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        for _ in range(len(self.targets)):
            n = next(self._turn) % len(self.targets)
            target = self.targets[n].with_path(request.path)
            try:
                async with self._session.request(
                    request.method, target, data=body, headers=headers
                ) as resp:
                    self.hits[n] += 1
                    return web.Response(
                        status=resp.status, body=await resp.read(), content_type="application/json"
                    )
            except aiohttp.ClientConnectorError:
                continue  # that replica is down: a health-checked balancer moves on
        return web.Response(status=502, text="no replica")
