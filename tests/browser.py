"""Headless Chromium for the report tests, driven over its DevTools protocol (aiohttp's
websocket client on loopback); installed with apt-get when missing, as the tests run as root."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

_NAMES = ("chromium", "chromium-browser")
#: A port nothing listens on: any request that tried to leave through the proxy fails.
CLOSED_PROXY = "http://127.0.0.1:9"


def chromium_binary() -> str:
    """Chromium from PATH; installed with apt-get (Debian's package) when missing."""
    found = next(filter(None, map(shutil.which, _NAMES)), None)
    if found:
        return found
    install_chromium()
    found = next(filter(None, map(shutil.which, _NAMES)), None)
    if not found:
        raise RuntimeError("apt-get installed chromium, yet no chromium binary is on PATH")
    return found


def install_chromium() -> None:
    """``apt-get install chromium``, once across concurrent test runs, retried (a busy dpkg
    lock or a mirror hiccup); raises with apt's output when it cannot."""
    if os.geteuid() != 0:
        raise RuntimeError(
            "the report tests need Chromium: apt-get install chromium (as root; not skipped)"
        )
    apt = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-o", "Acquire::Retries=3"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock_path = Path(tempfile.gettempdir()) / "seedream-async-apt.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        output = ""
        for _ in range(3):
            if any(map(shutil.which, _NAMES)):
                return
            steps = [[*apt, "update"], [*apt, "install", "-y", "chromium"]]
            for step in steps:
                done = subprocess.run(step, env=env, capture_output=True, text=True, check=False)
                output = done.stdout[-2000:] + done.stderr[-2000:]
                if done.returncode != 0:
                    break
            else:
                return
        raise RuntimeError(f"apt-get install chromium failed:\n{output}")


class DevTools:
    """One DevTools connection (flattened sessions): calls, and the events it has seen."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for message in self._ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self._calls.pop(data["id"])
                if "error" in data:
                    future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
            else:
                self.events.append(data)
                self._arrived.set()

    async def call(self, method: str, session: str | None = None, **params: Any) -> Any:
        """Send one command and return its result."""
        number = next(self._ids)
        future = self._calls[number] = asyncio.get_running_loop().create_future()
        message: dict[str, Any] = {"id": number, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        await self._ws.send_str(json.dumps(message))
        async with asyncio.timeout(60):
            return await future

    async def event(self, method: str, start: int = 0) -> dict[str, Any]:
        """The first event ``method`` seen from position ``start`` on (waiting for it)."""
        async with asyncio.timeout(60):
            while True:
                for event in self.events[start:]:
                    if event["method"] == method:
                        return event
                self._arrived.clear()
                await self._arrived.wait()

    async def aclose(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader


class Page:
    """A browser tab: navigate, evaluate, screenshot; every request URL it made."""

    def __init__(self, tools: DevTools, session: str) -> None:
        self._tools = tools
        self._session = session

    async def open(self, url: str) -> None:
        """Navigate and wait for the load event."""
        start = len(self._tools.events)
        await self._tools.call("Page.navigate", self._session, url=url)
        await self._tools.event("Page.loadEventFired", start)

    async def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (a promise is awaited)."""
        answer = await self._tools.call(
            "Runtime.evaluate",
            self._session,
            expression=expression,
            awaitPromise=True,
            returnByValue=True,
        )
        if "exceptionDetails" in answer:
            raise RuntimeError(f"page script failed: {answer['exceptionDetails']}")
        return answer["result"].get("value")

    async def screenshot(self, path: Path, *, full: bool = False) -> None:
        """A PNG of the viewport (or of the whole page)."""
        shot = await self._tools.call(
            "Page.captureScreenshot", self._session, format="png", captureBeyondViewport=full
        )
        path.write_bytes(base64.b64decode(shot["data"]))

    def requested(self) -> list[str]:
        """Every URL the page asked for, as the network log saw it."""
        return [
            e["params"]["request"]["url"]
            for e in self._tools.events
            if e["method"] == "Network.requestWillBeSent"
        ]


@contextlib.asynccontextmanager
async def chromium(width: int = 1280, height: int = 900) -> AsyncIterator[Page]:
    """A headless Chromium of its own (profile in a temporary directory), one tab open."""
    with tempfile.TemporaryDirectory(prefix="seedream-chromium-") as profile:
        argv = [
            chromium_binary(),
            "--headless=new",
            "--no-sandbox",  # as root (the tests' CI) Chromium refuses its sandbox
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0",
            f"--proxy-server={CLOSED_PROXY}",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            port = await _devtools_port(Path(profile), proc)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/json/version") as resp:
                    socket_url = (await resp.json())["webSocketDebuggerUrl"]
                async with http.ws_connect(socket_url, max_msg_size=0) as ws:
                    tools = DevTools(ws)
                    try:
                        yield await _new_tab(tools, width, height)
                    finally:
                        await tools.aclose()
        finally:
            proc.kill()
            await proc.wait()


async def _devtools_port(profile: Path, proc: asyncio.subprocess.Process) -> int:
    """The port Chromium picked: the first line of ``DevToolsActivePort`` in its profile."""
    marker = profile / "DevToolsActivePort"
    async with asyncio.timeout(60):
        while True:
            if proc.returncode is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode} before listening")
            with contextlib.suppress(FileNotFoundError, ValueError, IndexError):
                return int(marker.read_text().splitlines()[0])
            await asyncio.sleep(0.05)  # a file another process writes: nothing to wait on


async def _new_tab(tools: DevTools, width: int, height: int) -> Page:
    target = await tools.call("Target.createTarget", url="about:blank")
    attached = await tools.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)
    session = attached["sessionId"]
    for domain in ("Page", "Network", "Runtime"):
        await tools.call(f"{domain}.enable", session)
    await tools.call(
        "Emulation.setDeviceMetricsOverride",
        session,
        width=width,
        height=height,
        deviceScaleFactor=1,
        mobile=False,
    )
    return Page(tools, session)
