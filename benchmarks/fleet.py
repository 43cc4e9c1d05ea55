"""
The fleet benchmarks (issue 10): processes sharing one account through a real Redis.

Client side (``python -m benchmarks.fleet MODE ...``, one process each):
- ``rate``: after a line on stdin, sends ``--n`` createTask through the shared window.
- ``owner``: submits ``--n`` edits whose callbacks go to another process (``--public-url``),
  and prints when each task's awaiting coroutine woke (wall clock) and the round trips made.
- ``relay``: a replica that only receives callbacks, stamping when each one arrived.
Driver side: ``fleet_rate``, ``fleet_latency`` and ``fleet_round_trips`` below, run from
``benchmarks.run`` with the simulator in the driver process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
from yarl import URL

from seedream_async import CallbackReceiver, RedisCoordinator, SeedreamClient, Settings
from seedream_async._allocator import warm_allocator
from seedream_async.simulator import Simulator, SimulatorConfig
from tests.redis_server import RedisServer

UNLIMITED = Settings(create_rate=10_000_000, create_period=1.0, query_rate=10_000)
#: Safety polls out of reach: results come by callback (through Redis when routed).
CALLBACKS_ONLY = attrs.evolve(UNLIMITED, safety_poll_after=600.0, safety_poll_every=600.0)


def say(**line: object) -> None:
    print(json.dumps(line), flush=True)


def requests(n: int, tag: str) -> list[Any]:
    from benchmarks.client import requests as make  # noqa: PLC0415 (shared request maker)

    return [attrs.evolve(r, prompt=f"{tag} {r.prompt}") for r in make(n)]


# --- client side -----------------------------------------------------------------------------


async def rate(args: argparse.Namespace) -> None:
    settings = attrs.evolve(UNLIMITED, create_rate=args.rate, create_period=args.period)
    coordinator = RedisCoordinator(args.redis, namespace=args.namespace)
    async with SeedreamClient(
        "bench", base_url=URL(args.url), settings=settings, coordinator=coordinator
    ) as client:
        await client.credits()
        say(ready=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        started = time.time()
        await asyncio.gather(*(client.create_task(r) for r in requests(args.n, args.tag)))
        say(started=started, ended=time.time())


class StampingReceiver(CallbackReceiver):
    """Notes (wall clock) when each callback reached this process's handler."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.arrived: dict[str, float] = {}

    def _judge(self, method: str, token: str, body: bytes, headers: Any) -> Any:
        # Every path (embedded app, handle, ahandle) judges a request exactly once, first.
        self.arrived[token] = time.time()
        return super()._judge(method, token, body, headers)


async def relay(args: argparse.Namespace) -> None:
    receiver = StampingReceiver()
    coordinator = RedisCoordinator(args.redis, namespace=args.namespace)
    settings = CALLBACKS_ONLY
    async with SeedreamClient(
        "bench", base_url=URL(args.url), callbacks=receiver, coordinator=coordinator,
        settings=settings,
    ) as client:  # fmt: skip
        await client.credits()
        say(listen=str(receiver.local_url))
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        say(arrived=receiver.arrived)


async def owner(args: argparse.Namespace) -> None:
    receiver = CallbackReceiver(public_url=args.public_url or None)
    coordinator = None if args.alone else RedisCoordinator(args.redis, namespace=args.namespace)
    settings = attrs.evolve(CALLBACKS_ONLY, max_in_flight=args.n)
    woke: dict[str, float] = {}
    async with SeedreamClient(
        "bench", base_url=URL(args.url), callbacks=receiver, coordinator=coordinator,
        settings=settings,
    ) as client:  # fmt: skip
        await client.credits()
        trips = coordinator.round_trips if coordinator is not None else 0

        async def one(request: Any) -> None:
            handle = await client.submit(request)
            await handle.result()
            assert handle.token is not None
            woke[handle.token] = time.time()

        cpu = time.process_time()
        await asyncio.gather(*(one(r) for r in requests(args.n, args.tag)))
        cpu = time.process_time() - cpu
        trips = coordinator.round_trips - trips if coordinator is not None else 0
        say(woke=woke, round_trips=trips, cpu=cpu, n=args.n)


# --- driver side ------------------------------------------------------------------------------


async def spawn(mode: str, *argv: str, pinned: bool = True) -> asyncio.subprocess.Process:
    env = {**os.environ}
    env.pop("BENCH_CLIENT_CPU", None)
    if pinned and (cpu := os.environ.get("BENCH_FLEET_CPU")):
        env["BENCH_CLIENT_CPU"] = cpu
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.fleet", mode, *argv,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        cwd=Path(__file__).parent.parent, env=env,
        limit=1 << 24,  # one JSON line carries thousands of timestamps
    )  # fmt: skip


async def line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    raw = await asyncio.wait_for(proc.stdout.readline(), 120)
    if not raw:
        raise RuntimeError("a fleet benchmark process died")
    return dict(json.loads(raw))


async def ended(proc: asyncio.subprocess.Process, within: float = 60) -> None:
    """Wait for a process to exit; one that hangs is killed and named (never a silent hang)."""
    try:
        await asyncio.wait_for(proc.wait(), within)
    except TimeoutError:
        proc.kill()
        await ended(proc)
        raise RuntimeError(f"fleet benchmark process {proc.pid} hung; killed") from None


def go(*procs: asyncio.subprocess.Process) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")


async def fleet_rate(
    redis: RedisServer, processes: int, n: int, limit: int, period: float
) -> dict[str, Any]:
    """``processes`` clients, each believing it may use the whole window, share it."""
    async with Simulator(SimulatorConfig(create_limit=(limit, period))) as sim:
        each = n // processes
        common = ["--url", str(sim.url), "--redis", redis.url, "--namespace", "bench-rate",
                  "--n", str(each), "--rate", str(limit), "--period", str(period)]  # fmt: skip
        procs = [await spawn("rate", *common, "--tag", f"p{i}") for i in range(processes)]
        for proc in procs:
            await line(proc)
        go(*procs)
        spans = [await line(proc) for proc in procs]
        for proc in procs:
            await ended(proc)
        # From the first process starting to the last one done, inside the processes
        # (one machine, one wall clock): their start-up and shutdown are not the limiter's.
        wall = max(s["ended"] for s in spans) - min(s["started"] for s in spans)
        ideal = period * (-(-each * processes // limit) - 1)
        return {
            "processes": processes,
            "n": each * processes,
            "limit": f"{limit} per {period:g} s",
            "wall": wall,
            "ideal_wall": ideal,
            "efficiency": ideal / wall,
            "rate_limited": sim.stats.rate_limited,
        }


async def fleet_latency(redis: RedisServer, n: int, reps: int = 1) -> dict[str, Any]:
    """Callbacks reach another process; the owner wakes through Redis (the load of section 4:
    ``n`` tasks in flight, ending over a second). ``reps`` runs, their gaps pooled."""
    gaps: list[float] = []
    async with Simulator(SimulatorConfig(latency=(1.0, 2.0))) as sim:
        common = ["--url", str(sim.url), "--redis", redis.url, "--namespace", "bench-wake"]
        for _ in range(reps):
            # Not pinned: two replicas forced onto one core would measure the core, not the
            # SDK (replicas run on hosts of their own); they share the machine's two cores.
            relay_proc = await spawn("relay", *common, pinned=False)
            relay_url = (await line(relay_proc))["listen"]
            owner_args = ["--n", str(n), "--public-url", relay_url]
            owner_proc = await spawn("owner", *common, *owner_args, pinned=False)
            woke = (await line(owner_proc))["woke"]
            await ended(owner_proc)
            go(relay_proc)
            arrived = (await line(relay_proc))["arrived"]
            await ended(relay_proc)
            gaps += [(woke[t] - arrived[t]) * 1000 for t in woke if t in arrived]
    gaps.sort()
    return {
        "n": len(gaps),
        "runs": reps,
        "p50_ms": statistics.median(gaps),
        "p99_ms": gaps[max(0, int(len(gaps) * 0.99) - 1)],
        "max_ms": gaps[-1],
    }


async def fleet_rates(
    redis: RedisServer, processes: int, n: int, limit: int, period: float, *, reps: int
) -> dict[str, Any]:
    """``fleet_rate`` ``reps`` times: the median run's figures, every run's efficiency, and
    every 429 of every run (one is a failure, whichever run drew it)."""
    runs = [await fleet_rate(redis, processes, n, limit, period) for _ in range(reps)]
    runs.sort(key=lambda run: float(run["efficiency"]))
    median = runs[len(runs) // 2]
    return {
        **median,
        "runs": reps,
        "efficiencies": [round(float(run["efficiency"]), 3) for run in runs],
        "rate_limited": sum(int(run["rate_limited"]) for run in runs),
    }


async def fleet_round_trips(redis: RedisServer, n: int, reps: int) -> dict[str, Any]:
    """Round trips per task (callbacks at another replica, or at the owner), and the owner's
    CPU per task with and without the coordinator (callbacks at the owner), interleaved."""
    trips: dict[str, float] = {}
    cpu: dict[str, list[float]] = {"alone": [], "redis": []}
    async with Simulator(SimulatorConfig(latency=(0.01, 0.05))) as sim:
        common = ["--url", str(sim.url), "--redis", redis.url, "--namespace", "bench-trips"]
        relay_proc = await spawn("relay", *common)
        relay_url = (await line(relay_proc))["listen"]
        routed = await _owner(*common, "--n", str(n), "--public-url", relay_url)
        trips["callback at another replica"] = routed["round_trips"] / n
        for _ in range(reps):
            for variant, runs in cpu.items():
                flag = ["--alone"] if variant == "alone" else []
                run = await _owner(*common, "--n", str(n), *flag)
                runs.append(1e6 * run["cpu"] / n)
                if variant == "redis":
                    trips["callback at the owner"] = run["round_trips"] / n
        go(relay_proc)
        await line(relay_proc)
        await ended(relay_proc)
    alone, shared = (statistics.median(cpu[v]) for v in ("alone", "redis"))
    return {
        "n": n,
        "round_trips_per_task": trips,
        "cpu_us_per_task": {"alone": alone, "redis": shared},
        "cpu_ratio": shared / alone,
    }


async def _owner(*argv: str) -> dict[str, Any]:
    proc = await spawn("owner", *argv)
    result = await line(proc)
    await ended(proc)
    return result


async def with_redis(work: Any) -> dict[str, Any]:
    """Run ``work(server)`` against a fresh Redis of its own."""
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            result: dict[str, Any] = await work(server)
        finally:
            server.stop()
    return result


def main() -> None:
    if cpu := os.environ.get("BENCH_CLIENT_CPU"):
        os.sched_setaffinity(0, {int(cpu)})
    warm_allocator()  # as every benchmark client: see benchmarks/client.py
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=("rate", "relay", "owner"))
    parser.add_argument("--url", required=True)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--rate", type=int, default=20)
    parser.add_argument("--period", type=float, default=0.5)
    parser.add_argument("--tag", default="t")
    parser.add_argument("--public-url", default="")
    parser.add_argument("--alone", action="store_true", help="no coordinator (the comparison)")
    args = parser.parse_args()
    asyncio.run({"rate": rate, "relay": relay, "owner": owner}[args.mode](args))


if __name__ == "__main__":
    main()
