"""
Run every benchmark and write ``benchmarks/results/latest.json`` and ``benchmarks/RESULTS.md``.

``python -m benchmarks.run`` (``--quick`` for a smoke run). This process hosts the simulator
(the service); each measurement runs the client in a fresh process of its own, and every
comparison is measured side by side in the same run, interleaved, medians of repetitions.
Targets are reported as pass or miss; nothing here is a test assertion.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import attrs

from seedream_async._allocator import warm_allocator
from seedream_async.simulator import Simulator, SimulatorConfig

HERE = Path(__file__).parent
VARIANTS = ("baseline", "edit_many", "edit", "edit_many_journal", "edit_uvloop")
#: Variant -> (client variant, event loop): the speed extra's loop against the same work.
LOOPS = {"edit_uvloop": ("edit", "uvloop")}
#: With two cores or more, the service (this process) and the client get one core each:
#: measured side by side on a shared core, runs of the same setting spread 10-25 %.
PINNED = len(os.sched_getaffinity(0)) >= 2
SERVICE_CPU, CLIENT_CPU = [*sorted(os.sched_getaffinity(0)), 0, 0][:2]


async def client(mode: str, sim: Simulator, **options: object) -> dict[str, Any]:
    """Run one client measurement in a fresh process against ``sim``."""
    out, _ = await run_client([], mode, sim, options)
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def run_client(
    wrapper: list[str], mode: str, sim: Simulator, options: dict[str, object]
) -> tuple[bytes, bytes]:
    """Run ``benchmarks.client`` (under ``wrapper``, say valgrind) in a fresh process, pinned
    to the client's core; its stdout and stderr."""
    argv, env = _client_command(wrapper, mode, sim, options)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=HERE.parent,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{err.decode()[-3000:]}")
    return out, err


def _client_command(
    wrapper: list[str], mode: str, sim: Simulator, options: dict[str, object]
) -> tuple[list[str], dict[str, str]]:
    argv = [*wrapper, sys.executable, "-m", "benchmarks.client", mode, "--url", str(sim.url)]
    for name, value in options.items():
        argv += [f"--{name.replace('_', '-')}", str(value)]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if PINNED:
        env["BENCH_CLIENT_CPU"] = str(CLIENT_CPU)
    return argv, env


class RoundClient:
    """A client process kept up across rounds (``benchmarks.client overhead --rounds``)."""

    def __init__(self, proc: asyncio.subprocess.Process, argv: list[str], err: Any) -> None:
        self._proc, self._argv, self._err = proc, argv, err

    @classmethod
    async def start(cls, sim: Simulator, options: dict[str, object]) -> RoundClient:
        argv, env = _client_command([], "overhead", sim, options)
        err = tempfile.TemporaryFile()  # noqa: SIM115 (closed by ``close``)
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=HERE.parent,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
        return cls(proc, argv, err)

    async def measure(self) -> dict[str, Any]:
        """Ask for one measured round; its figures."""
        stdin, stdout = self._proc.stdin, self._proc.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(b"go\n")
        await stdin.drain()
        line = await stdout.readline()
        if not line:
            await self.close()  # raises with the client's error, if it failed
            raise RuntimeError(f"{' '.join(self._argv)} ended before its round")
        result: dict[str, Any] = json.loads(line)
        return result

    async def close(self) -> None:
        """End the process; ``RuntimeError`` with its stderr if it failed."""
        if self._proc.stdin is not None and not self._proc.stdin.is_closing():
            self._proc.stdin.close()
        await self._proc.communicate()
        self._err.seek(0)
        err = self._err.read().decode(errors="replace")
        self._err.close()
        if self._proc.returncode != 0:
            raise RuntimeError(f"{' '.join(self._argv)} failed:\n{err[-3000:]}")


async def measured(mode: str, config: SimulatorConfig, **options: object) -> dict[str, Any]:
    """One client run against a fresh simulator; adds the simulator's counts."""
    async with Simulator(config) as sim:
        result = await client(mode, sim, **options)
        result["sim"] = {
            "tasks": sim.stats.tasks_created,
            "rate_limited": sim.stats.rate_limited,
            "polls": sim.stats.polls,
            "peak_poll_rate": sim.stats.peak_poll_rate(1.0),
        }
    return result


# --- the five benchmarks --------------------------------------------------------------------


async def overhead(rounds: int, sizes: dict[str, int], procs: int = 1) -> dict[str, Any]:
    """Client CPU per task of each variant against the bare loop, at each in-flight size.

    ``procs`` warm processes per variant, all up at once against one simulator, each asked
    in turn for a round of ``n`` tasks (the order reversed every other round): the variants
    take turns every few tenths of a second, so a slow phase of the machine (they last
    seconds and move CPU per task by up to 30 %) falls on all of them alike, and each
    variant's figure is spread over several processes (one process runs ~2 % faster or
    slower than another of the same code for its whole life). Totals over the rounds.
    """
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for in_flight, n in sizes.items():
        per = runs.setdefault(in_flight, {v: [] for v in VARIANTS})
        # Finished tasks forgotten after a while: the service stays small over every round.
        async with Simulator(SimulatorConfig(task_ttl=30.0)) as sim:
            clients: dict[tuple[str, int], RoundClient] = {}
            try:
                for variant in VARIANTS:
                    work, loop = LOOPS.get(variant, (variant, "asyncio"))
                    options = {"variant": work, "n": n, "in_flight": in_flight, "loop": loop}
                    for i in range(procs):
                        clients[variant, i] = await RoundClient.start(
                            sim, {**options, "rounds": rounds}
                        )
                order = list(clients)
                for turn in range(rounds):
                    for variant, i in order if turn % 2 == 0 else order[::-1]:
                        per[variant].append(await clients[variant, i].measure())
            finally:
                for c in clients.values():
                    await c.close()
    table: dict[str, Any] = {}
    for in_flight, per in runs.items():
        row: dict[str, Any] = {}
        for variant, results in per.items():
            # Totals, not medians of rounds: a full collection of the cyclic GC (~20 ms) falls
            # in a minority of rounds, and a median would leave it out.
            tasks = sum(r["n"] for r in results)
            row[variant] = {
                "tasks_per_s": tasks / sum(r["wall"] for r in results),
                "cpu_us_per_task": 1e6 * sum(r["cpu"] for r in results) / tasks,
            }
        for variant in VARIANTS[1:]:
            row[variant]["cpu_ratio"] = (
                row[variant]["cpu_us_per_task"] / row["baseline"]["cpu_us_per_task"]
            )
            row[variant]["throughput_ratio"] = (
                row[variant]["tasks_per_s"] / row["baseline"]["tasks_per_s"]
            )
            # The spread: each round's ratio to the bare loop's round (quartiles).
            paired = [
                r["cpu"] / r["n"] / (b["cpu"] / b["n"])
                for r, b in zip(per[variant], per["baseline"], strict=True)
            ]
            if len(paired) >= 2:
                row[variant]["round_ratio_quartiles"] = statistics.quantiles(paired, n=4)
        table[in_flight] = row
    return {"rounds": rounds, "procs": procs, "sizes": sizes, "results": table, "raw": runs}


async def memory(reps: int, n: int) -> dict[str, Any]:
    slow = SimulatorConfig(latency=(600.0, 600.0))  # every task parked in flight
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "sdk": []}
    for _ in range(reps):
        for variant, results in runs.items():
            results.append(await measured("memory", slow, variant=variant, n=n))
    per_task = {v: statistics.median(r["per_task"] for r in rs) for v, rs in runs.items()}
    return {
        "n": n,
        "per_task_bytes": per_task,
        "ratio": per_task["sdk"] / per_task["baseline"],
        "raw": runs,
    }


async def batch_peak(small: int, large: int, in_flight: int) -> dict[str, Any]:
    runs = {
        str(n): await measured("batch_peak", SimulatorConfig(), n=n, in_flight=in_flight)
        for n in (small, large)
    }
    return {
        "in_flight": in_flight,
        "peak_bytes": {n: r["peak"] for n, r in runs.items()},
        "growth": runs[str(large)]["peak"] / runs[str(small)]["peak"] - 1,
        "raw": runs,
    }


async def instructions(sizes: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Client instructions per task under cachegrind: counts that the machine's noise does not
    move (two runs of the same code agree within ~1 %), where CPU time moves by up to 30 %.

    Each variant runs twice, with ``lo`` and ``hi`` tasks; the difference divided by
    ``hi - lo`` is the cost of one task without the start-up's. Instructions do not see
    memory stalls (the cyclic GC's pointer chasing is mostly that), so CPU time stays the
    measure of the targets; this tells which way a change moves the SDK's own work.
    """
    if not sizes:
        return {"skipped": "not in the quick plan (a minute under valgrind)"}
    if shutil.which("valgrind") is None:
        return {"skipped": "valgrind is not installed"}
    table: dict[str, Any] = {}
    for in_flight, (lo, hi) in sizes.items():
        row = table.setdefault(in_flight, {})
        for variant in ("baseline", "edit", "edit_many"):
            counts = [await _instructions(variant, n, int(in_flight)) for n in (lo, hi)]
            row[variant] = {"per_task": (counts[1] - counts[0]) / (hi - lo)}
        for variant in ("edit", "edit_many"):
            row[variant]["ratio"] = row[variant]["per_task"] / row["baseline"]["per_task"]
    return {"sizes": sizes, "results": table}


async def _instructions(variant: str, n: int, in_flight: int) -> int:
    """Instructions the client process ran for ``n`` tasks (plus start-up and warm-up)."""
    with tempfile.TemporaryDirectory() as tmp:
        async with Simulator(SimulatorConfig()) as sim:
            wrapper = ["valgrind", "--tool=cachegrind", "--cache-sim=no"]
            wrapper.append(f"--cachegrind-out-file={tmp}/out")
            options: dict[str, object] = {"variant": variant, "n": n, "in_flight": in_flight}
            _, err = await run_client(wrapper, "overhead", sim, options)
    found = re.search(rb"I\s+refs:\s+([\d,]+)", err)
    if found is None:
        raise RuntimeError(f"cachegrind of {variant} counted nothing:\n{err.decode()[-3000:]}")
    return int(found.group(1).replace(b",", b""))


async def million(small: int, large: int) -> dict[str, Any]:
    """A journaled batch of ``large`` inputs against one of ``small`` (peak RSS), then the
    rerun of the finished large one (every input skipped from the journal)."""
    # The service forgets finished tasks after a minute, as a real one is bounded too.
    service = SimulatorConfig(task_ttl=60.0)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            str(n): await measured(
                "million", service, n=n, in_flight=100, journal=Path(tmp) / f"j{n}"
            )
            for n in (small, large)
        }
        again = await measured(
            "resume", SimulatorConfig(), n=large, in_flight=100, journal=Path(tmp) / f"j{large}"
        )
    assert again["sim"]["tasks"] == 0, "the rerun sent something"
    big = runs[str(large)]
    return {
        "small": small,
        "large": large,
        "peak_bytes": {n: r["peak"] for n, r in runs.items()},
        "growth": big["peak"] / runs[str(small)]["peak"] - 1,
        "cpu_us_per_task": 1e6 * big["cpu"] / big["n"],
        "tasks_per_s": big["n"] / big["wall"],
        "resume_wall": again["wall"],
        "resume_us_per_input": 1e6 * again["cpu"] / again["n"],
        "raw": {**runs, "resume": again},
    }


async def rate_limit(n: int, rate: int, period: float) -> dict[str, Any]:
    config = SimulatorConfig(create_limit=(rate, period))
    run = await measured("rate", config, n=n, rate=rate, period=period)
    # A perfect limiter sends the last request (n/rate - 1) windows after the first.
    ideal = period * (-(-n // rate) - 1)
    return {
        "n": n,
        "limit": f"{rate} per {period:g} s",
        "wall": run["wall"],
        "ideal_wall": ideal,
        "efficiency": ideal / run["wall"],
        "rate_limited": run["sim"]["rate_limited"],
    }


async def wake_latency(n: int) -> dict[str, Any]:
    run = await measured("latency", SimulatorConfig(latency=(1.0, 2.0)), n=n)
    return {"in_flight": n, **{k: run[k] for k in ("p50_ms", "p99_ms", "max_ms")}}


async def journal_writes(n: int) -> dict[str, Any]:
    run = await measured("journal_writes", SimulatorConfig(), n=n)
    return {k: run[k] for k in ("n", "sending_us", "sending_grouped_us", "accepted_us")}


async def upload_memory(reps: int, small: int, large: int, size: int) -> dict[str, Any]:
    config = SimulatorConfig(keep_uploads=False)
    runs: dict[str, list[dict[str, Any]]] = {str(small): [], str(large): []}
    for _ in range(reps):
        for n in (small, large):  # interleaved; the client warms up with 20 more first
            runs[str(n)].append(await measured("uploads", config, n=n + 20, size=size))
    peak = {n: statistics.median(r["peak"] for r in rs) for n, rs in runs.items()}
    wall = statistics.median(r["wall"] for r in runs[str(large)])
    return {
        "size": size,
        "reps": reps,
        "peak_bytes": peak,
        "growth": peak[str(large)] / peak[str(small)] - 1,
        "mb_per_s": large * size / wall / 2**20,
        "files_per_s": large / wall,
    }


async def fleet(plan: Plan) -> dict[str, Any]:
    from benchmarks import fleet as f  # noqa: PLC0415 (needs the redis extra)

    os.environ["BENCH_FLEET_CPU"] = str(CLIENT_CPU) if PINNED else ""
    return {
        "rate": await f.with_redis(
            lambda r: f.fleet_rates(r, 4, plan.fleet_rate_tasks, 20, 0.5, reps=plan.reps)
        ),
        "latency": await f.with_redis(lambda r: f.fleet_latency(r, plan.latency_tasks, plan.reps)),
        "trips": await f.with_redis(lambda r: f.fleet_round_trips(r, plan.fleet_tasks, plan.reps)),
    }


async def polling(n: int, rate: int) -> dict[str, Any]:
    config = SimulatorConfig(latency=(0.2, 2.0), query_limit=(rate, 1.0))
    run = await measured("polling", config, n=n, rate=rate)
    return {
        "n": n,
        "configured_rate": rate,
        "polls_per_task": run["sim"]["polls"] / n,
        "peak_poll_rate": run["sim"]["peak_poll_rate"],
        "rate_limited": run["sim"]["rate_limited"],
        "wall": run["wall"],
    }


# --- the report -----------------------------------------------------------------------------


def targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    over = r["overhead"]["results"]["100"]
    worst = max(over["edit_many"]["cpu_ratio"], over["edit"]["cpu_ratio"])
    return [*fast_path_targets(r), *earlier_targets(r, over, worst)]


def fast_path_targets(r: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Issue 13's targets (the fast path)."""
    over = r["overhead"]["results"]
    rows = []
    for in_flight, limit in (("100", 1.15), ("1000", 1.3)):
        if in_flight not in over:
            continue
        row = over[in_flight]
        worst = max(row["edit_many"]["cpu_ratio"], row["edit"]["cpu_ratio"])
        rows.append(
            (
                f"fast path: client CPU per task <= {limit}x baseline at {in_flight} in flight",
                f"edit_many {row['edit_many']['cpu_ratio']:.2f}x,"
                f" edit {row['edit']['cpu_ratio']:.2f}x",
                worst <= limit,
            )
        )
    row = over["100"]
    journal = row["edit_many_journal"]["cpu_us_per_task"] / row["edit_many"]["cpu_us_per_task"]
    rows += [
        (
            "fast path: memory per parked task <= 1.25x baseline",
            f"{r['memory']['ratio']:.2f}x",
            r["memory"]["ratio"] <= 1.25,
        ),
        (
            "speed extra: edit on uvloop <= the raw loop on asyncio, 100 in flight",
            f"{row['edit_uvloop']['cpu_ratio']:.2f}x",
            row["edit_uvloop"]["cpu_ratio"] <= 1.0,
        ),
        (
            "journal adds <= 10 % client CPU per task (edit_many_journal / edit_many)",
            f"{journal:.2f}x",
            journal <= 1.1,
        ),
    ]
    counted = r.get("instructions", {}).get("results", {})
    for in_flight, row in counted.items():
        rows.append(
            (
                f"client instructions per task at {in_flight} in flight, under cachegrind"
                " (report: the same work without the machine's noise)",
                f"edit_many {row['edit_many']['ratio']:.2f}x, edit {row['edit']['ratio']:.2f}x",
                True,
            )
        )
    if "million" in r:
        m = r["million"]
        rows += [
            (
                f"{m['large']:,} journaled inputs: peak RSS within 10 % of {m['small']:,}",
                f"{100 * m['growth']:+.1f} %",
                m["growth"] <= 0.10,
            ),
            (
                f"resuming a finished {m['large']:,}-input journal (report)",
                f"{m['resume_wall']:.1f} s ({m['resume_us_per_input']:.0f} us per input)",
                True,
            ),
        ]
    return rows


def earlier_targets(
    r: dict[str, Any], over: dict[str, Any], worst: float
) -> list[tuple[str, str, bool]]:
    """The targets of the first phase and of the fleet."""
    return [
        (
            "client CPU per task <= 1.5x baseline at 100 in flight",
            f"edit_many {over['edit_many']['cpu_ratio']:.2f}x,"
            f" edit {over['edit']['cpu_ratio']:.2f}x",
            worst <= 1.5,
        ),
        (
            "memory per task in flight <= 2x baseline",
            f"{r['memory']['ratio']:.2f}x",
            r["memory"]["ratio"] <= 2.0,
        ),
        (
            "peak memory of the large batch within 10 % of the small one",
            f"{100 * r['batch_peak']['growth']:+.1f} %",
            r["batch_peak"]["growth"] <= 0.10,
        ),
        (
            "rate-limit efficiency >= 0.97 with zero 429s",
            f"{r['rate_limit']['efficiency']:.3f}, {r['rate_limit']['rate_limited']} x 429",
            r["rate_limit"]["efficiency"] >= 0.97 and r["rate_limit"]["rate_limited"] == 0,
        ),
        (
            "callback-to-wake p99 <= 5 ms with 1000 in flight",
            f"p99 {r['latency']['p99_ms']:.2f} ms (p50 {r['latency']['p50_ms']:.2f} ms)",
            r["latency"]["p99_ms"] <= 5.0,
        ),
        (
            "polling never exceeds the configured recordInfo rate",
            f"peak {r['polling']['peak_poll_rate']}/s vs {r['polling']['configured_rate']}/s,"
            f" {r['polling']['rate_limited']} x 429",
            r["polling"]["peak_poll_rate"] <= r["polling"]["configured_rate"]
            and r["polling"]["rate_limited"] == 0,
        ),
        (
            "fleet: 4 processes, rate-limit efficiency >= 0.97 (median run) with zero 429s",
            f"{r['fleet']['rate']['efficiency']:.3f}, {r['fleet']['rate']['rate_limited']} x 429",
            r["fleet"]["rate"]["efficiency"] >= 0.97 and r["fleet"]["rate"]["rate_limited"] == 0,
        ),
        (
            "fleet: cross-process callback-to-wake p99 <= 5 ms",
            f"p99 {r['fleet']['latency']['p99_ms']:.2f} ms",
            r["fleet"]["latency"]["p99_ms"] <= 5.0,
        ),
        (
            "uploads: peak RSS for 200 files of 5 MiB within 10 % of 20 files",
            f"{100 * r['uploads']['growth']:+.1f} %",
            r["uploads"]["growth"] <= 0.10,
        ),
        (
            "fleet: client CPU per task with the coordinator <= 1.3x without",
            f"{r['fleet']['trips']['cpu_ratio']:.2f}x",
            r["fleet"]["trips"]["cpu_ratio"] <= 1.3,
        ),
    ]


def fleet_markdown(f: dict[str, Any]) -> list[str]:
    rate, lat, trips = f["rate"], f["latency"], f["trips"]
    efficiencies = rate.get("efficiencies", [round(rate["efficiency"], 3)])
    per = ", ".join(f"{v:.2f} with the {k}" for k, v in trips["round_trips_per_task"].items())
    cpu = trips["cpu_us_per_task"]
    return [
        "## 7. Fleet: processes sharing one account through Redis",
        "",
        f"- **Shared window:** {rate['processes']} processes, each believing it may send"
        f" {rate['limit']}, {rate['n']} createTask in all against a simulator enforcing that"
        f" window for the account, {rate.get('runs', 1)} runs: the median run took"
        f" {rate['wall']:.2f} s against an ideal {rate['ideal_wall']:.2f} s, efficiency"
        f" {rate['efficiency']:.3f} (every run: {', '.join(map(str, efficiencies))});"
        f" {rate['rate_limited']} responses 429 in all runs.",
        f"- **Cross-process callback-to-wake:** {lat['n']} callbacks ({lat.get('runs', 1)} runs,"
        f" pooled) received by another process than the one awaiting: p50"
        f" {lat['p50_ms']:.2f} ms, p99 {lat['p99_ms']:.2f} ms, max {lat['max_ms']:.2f} ms"
        " (handler entry in one process to the coroutine waking in the other, wall clock of"
        " one machine).",
        f"- **Redis round trips per task:** {per}.",
        f"- **Client CPU per task** (callbacks at the owner, {trips['n']} tasks, medians):"
        f" {cpu['alone']:.0f} us alone, {cpu['redis']:.0f} us with the coordinator,"
        f" **{trips['cpu_ratio']:.2f}x**.",
    ]


def overhead_heading(o: dict[str, Any]) -> list[str]:
    """The overhead table's title and how it was measured."""
    if "rounds" not in o:  # a run from before rounds (fresh processes, medians)
        return [f"## 1. Overhead against the raw aiohttp loop ({o['reps']} repetitions)"]
    procs = o.get("procs", 1)
    return [
        "## 1. Overhead against the raw aiohttp loop"
        f" ({o['rounds']} rounds x {procs} processes per variant)",
        "",
        f"Each variant runs in {procs} warm processes at once, each asked in turn for a round"
        " of tasks, the order reversed every other round; CPU per task is the total over"
        " every round. The quartiles are of each round's ratio to the bare loop's round of"
        " the same turn: the spread a single short run would show.",
    ]


def instructions_markdown(i: dict[str, Any] | None) -> list[str]:
    if i is None:
        return []
    if "skipped" in i:
        return ["## 10. Instructions per task", "", f"Not measured: {i['skipped']}."]
    lines = [
        "## 10. Instructions per task",
        "",
        "The client under `valgrind --tool=cachegrind --cache-sim=no`, each variant run with"
        " two batch sizes; the difference per task leaves start-up and warm-up out. Two runs"
        " of the same code agree within ~1 %, so this is the measure that tells which way a"
        " change moves the SDK's own work; it does not see memory stalls (most of the cyclic"
        " GC's cost), which the CPU times of table 1 do.",
        "",
        "| in flight | tasks (difference of) | variant | instructions per task | ratio |",
        "|---|---|---|---|---|",
    ]
    for in_flight, row in i["results"].items():
        lo, hi = i["sizes"][in_flight]
        for variant, v in row.items():
            ratio = f"{v['ratio']:.2f}" if "ratio" in v else "1"
            lines.append(
                f"| {in_flight} | {hi:,} - {lo:,} | {variant} | {v['per_task'] / 1e3:,.0f} k"
                f" | {ratio} |"
            )
    return lines


def million_markdown(m: dict[str, Any] | None) -> list[str]:
    if m is None:
        return []
    peaks = ", ".join(f"{int(n):,} inputs: {b / 2**20:.1f} MiB" for n, b in m["peak_bytes"].items())
    return [
        "## 9. A million inputs",
        "",
        f"`edit_many` over {m['large']:,} lazily generated inputs with a journal, 100 in flight,"
        " against a simulator that forgets finished tasks after a minute. Peak RSS of the"
        f" client: {peaks} (**{100 * m['growth']:+.1f} %**). The large run:"
        f" {m['tasks_per_s']:,.0f} tasks/s, {m['cpu_us_per_task']:.0f} us client CPU per task."
        f" Rerunning it on its finished journal skipped every input in"
        f" **{m['resume_wall']:.1f} s** ({m['resume_us_per_input']:.0f} us per input, building"
        " each input's `EditRequest` included) and sent nothing.",
    ]


def uploads_markdown(u: dict[str, Any]) -> list[str]:
    peaks = ", ".join(f"{int(n):,} files: {b / 2**20:.1f} MiB" for n, b in u["peak_bytes"].items())
    return [
        "## 8. Uploading local images",
        "",
        f"Distinct files of {u['size'] / 2**20:.0f} MiB each, streamed to the simulator's"
        f" stream-upload endpoint over loopback. Peak RSS of the client during the run, after"
        f" 20 warm-up uploads (the high-water mark reset in between), median of"
        f" {u['reps']}: {peaks}"
        f" (**{100 * u['growth']:+.1f} %**). Throughput with the default concurrency of 4:"
        f" {u['mb_per_s']:.0f} MiB/s, {u['files_per_s']:.1f} files/s (each file is also"
        " hashed, SHA-256, in a thread).",
    ]


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "aiohttp": version("aiohttp"),
        "platform": platform.platform(),
        "pinned": f"service on CPU {SERVICE_CPU}, client on CPU {CLIENT_CPU}" if PINNED else "no",
    }


def markdown(r: dict[str, Any], notes: str) -> str:
    m = r["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {r['date']} with `{r['command']}` on {m['cores']} cores ({m['cpu']}),",
        f"Python {m['python']}, aiohttp {m['aiohttp']}, {m['platform']}.",
        "The simulator (the service) runs in the driver process, each client in a process of",
        f"its own (pinned: {m['pinned']}). Medians of the repetitions (the overhead table:",
        "totals over rounds); each comparison measured side by side, interleaved, in this",
        "same run. Raw numbers:",
        "`results/latest.json`.",
        "",
        "## Targets",
        "",
        "| target | measured | |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {value} | {'pass' if ok else '**miss**'} |" for name, value, ok in targets(r)
    ]
    o = r["overhead"]
    lines += [
        "",
        *overhead_heading(o),
        "",
        "| in flight | tasks per round | variant | tasks/s | client CPU us/task | CPU ratio"
        " | rounds' ratios (quartiles) | throughput ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for in_flight, row in o["results"].items():
        n = o["sizes"][in_flight]
        for variant in VARIANTS:
            v = row[variant]
            ratio = f"{v['cpu_ratio']:.2f}" if "cpu_ratio" in v else "1"
            spread = "/".join(f"{q:.2f}" for q in v.get("round_ratio_quartiles", ())) or "-"
            thr = f"{v['throughput_ratio']:.2f}" if "throughput_ratio" in v else "1"
            lines.append(
                f"| {in_flight} | {n} | {variant} | {v['tasks_per_s']:,.0f} |"
                f" {v['cpu_us_per_task']:.0f} | {ratio} | {spread} | {thr} |"
            )
    mem, peak = r["memory"], r["batch_peak"]
    lines += [
        "",
        f"## 2. Memory ({mem['n']:,} tasks parked in flight;"
        f" batches at {peak['in_flight']} in flight)",
        "",
        "Resident memory after submitting (100 at a time, on both sides) and parking every"
        " task, minus before, per task: the parked state, not the submission burst.",
        "",
        "| measure | baseline | SDK | ratio |",
        "|---|---|---|---|",
        f"| client memory per task in flight | {mem['per_task_bytes']['baseline'] / 1024:.2f} KiB |"
        f" {mem['per_task_bytes']['sdk'] / 1024:.2f} KiB | {mem['ratio']:.2f} |",
        "",
        "| batch size | peak RSS |",
        "|---|---|",
    ]
    lines += [f"| {int(n):,} | {b / 2**20:.1f} MiB |" for n, b in peak["peak_bytes"].items()]
    rl, lat, pol = r["rate_limit"], r["latency"], r["polling"]
    lines += [
        "",
        "## 3. Rate-limit efficiency",
        "",
        f"{rl['n']} createTask against a simulator enforcing {rl['limit']} (the account's 20 per"
        f" 10 s, scaled): {rl['wall']:.2f} s against an ideal {rl['ideal_wall']:.2f} s, efficiency"
        f" {rl['efficiency']:.3f}, {rl['rate_limited']} responses 429.",
        "",
        "## 4. Callback-to-wake latency",
        "",
        f"{lat['in_flight']} tasks in flight: p50 {lat['p50_ms']:.3f} ms,"
        f" p99 {lat['p99_ms']:.3f} ms,"
        f" max {lat['max_ms']:.3f} ms from the callback reaching the SDK's handler to the awaiting"
        " coroutine running again.",
        "",
        "## 5. Polling mode",
        "",
        f"{pol['n']} tasks, no callbacks, the simulator and the client both limited to"
        f" {pol['configured_rate']} recordInfo per second: {pol['polls_per_task']:.2f} polls per"
        f" finished task, peak {pol['peak_poll_rate']} per second, {pol['rate_limited']} responses"
        f" 429, {pol['wall']:.1f} s.",
        "",
        "## 6. Journal writes",
        "",
        f"{r['journal_writes']['n']:,} rows on this machine's disk. Writes are committed"
        " together at most every 5 ms; a commit with `sending` rows is fsynced before their"
        " createTasks go out. A `sending` row committed alone costs"
        f" {r['journal_writes']['sending_us']:.0f} us; grouped 100 to a commit"
        f" {r['journal_writes'].get('sending_grouped_us', float('nan')):.1f} us; a grouped"
        f" `NORMAL` update {r['journal_writes']['accepted_us']:.1f} us."
        " `edit_many_journal` in table 1 is the whole batch with a journal.",
        "",
        *fleet_markdown(r["fleet"]),
        "",
        *uploads_markdown(r["uploads"]),
        "",
        *million_markdown(r.get("million")),
        "",
        *instructions_markdown(r.get("instructions")),
        "",
        notes.strip(),
        "",
    ]
    return "\n".join(lines)


ONLY = (
    "overhead",
    "memory",
    "batch_peak",
    "rate_limit",
    "latency",
    "polling",
    "journal_writes",
    "fleet",
    "uploads",
    "million",
    "instructions",
)


async def _one(name: str, plan: Plan) -> dict[str, Any]:
    result = await _steps(plan)[name]()
    result.pop("raw", None)
    return result


def _steps(plan: Plan) -> dict[str, Callable[[], Awaitable[dict[str, Any]]]]:
    return {
        "overhead": lambda: overhead(plan.table_reps, plan.sizes, plan.overhead_procs),
        "memory": lambda: memory(plan.reps, plan.parked),
        "batch_peak": lambda: batch_peak(plan.small_batch, plan.large_batch, in_flight=100),
        "rate_limit": lambda: rate_limit(plan.rate_tasks, 20, plan.rate_period),
        "latency": lambda: wake_latency(plan.latency_tasks),
        "polling": lambda: polling(plan.polled_tasks, 20),
        "journal_writes": lambda: journal_writes(plan.journal_writes),
        "fleet": lambda: fleet(plan),
        "uploads": lambda: upload_memory(
            plan.reps, plan.upload_files[0], plan.upload_files[1], 5 << 20
        ),
        "million": lambda: million(*plan.million),
        "instructions": lambda: instructions(plan.counted),
    }


async def main(quick: bool) -> dict[str, Any]:
    plan = QUICK if quick else FULL
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": "python -m benchmarks.run" + (" --quick" if quick else ""),
        "machine": machine(),
    }
    for name, step in _steps(plan).items():
        print(f"running {name} ...", file=sys.stderr, flush=True)
        results[name] = await step()
    return results


@attrs.frozen
class Plan:
    """How big each benchmark is."""

    reps: int
    sizes: dict[str, int]  # in flight -> tasks
    parked: int
    small_batch: int
    large_batch: int
    rate_tasks: int
    rate_period: float
    latency_tasks: int
    polled_tasks: int
    journal_writes: int
    fleet_rate_tasks: int
    fleet_tasks: int
    upload_files: tuple[int, int] = (20, 200)
    #: The journaled batch sizes compared (peak RSS), the large one also resumed.
    million: tuple[int, int] = (10_000, 1_000_000)
    #: Rounds of the overhead table, the noisiest figures on a shared machine, and the
    #: processes per variant that take them in turn.
    overhead_reps: int = 0
    overhead_procs: int = 1
    #: In flight -> the two batch sizes whose instruction counts are subtracted.
    counted: dict[str, tuple[int, int]] = attrs.field(
        factory=lambda: {"100": (500, 2500), "1000": (1000, 4000)}
    )

    @property
    def table_reps(self) -> int:
        return self.overhead_reps or self.reps


QUICK = Plan(
    1,
    {"10": 300, "100": 300},
    500,
    500,
    1500,
    100,
    0.25,
    200,
    50,
    200,
    80,
    200,
    (4, 12),
    (2_000, 20_000),
    counted={},
)
FULL = Plan(
    3,
    # Rounds as long as the fresh-process runs were: each round of the journaled batch opens
    # a new journal, and a short one is mostly start-up (and may never checkpoint its WAL).
    {"10": 3000, "100": 3000, "1000": 5000},
    10_000,
    10_000,
    100_000,
    200,
    0.5,
    1000,
    200,
    2000,
    400,
    2000,
    overhead_reps=4,
    overhead_procs=3,
)


def cli() -> None:
    """``python -m benchmarks.run``."""
    parser = argparse.ArgumentParser(description="Run every benchmark; write RESULTS.md.")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--only", choices=ONLY, help="run one benchmark (no report written)")
    parser.add_argument(
        "--report", action="store_true", help="re-render RESULTS.md from results/latest.json"
    )
    args = parser.parse_args()
    notes_file = HERE / "NOTES.md"
    notes = notes_file.read_text() if notes_file.exists() else ""
    if args.report:
        saved = json.loads((args.out / "results" / "latest.json").read_text())
        (args.out / "RESULTS.md").write_text(markdown(saved, notes))
        return
    if PINNED:
        os.sched_setaffinity(0, {SERVICE_CPU})
    warm_allocator()  # the service's reads too: see benchmarks/client.py
    if args.only:
        plan = QUICK if args.quick else FULL
        print(json.dumps(asyncio.run(_one(args.only, plan)), indent=2))
        return
    results = asyncio.run(main(args.quick))
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    name = "quick.json" if args.quick else "latest.json"
    (args.out / "results" / name).write_text(json.dumps(results, indent=2))
    report = markdown(results, notes)
    if not args.quick:
        (args.out / "RESULTS.md").write_text(report)
    print(report)


if __name__ == "__main__":
    cli()
