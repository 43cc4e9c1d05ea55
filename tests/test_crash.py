"""kill -9 at any moment loses nothing and pays nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from collections import Counter
from pathlib import Path

import pytest

from seedream_async._journal import Journal, Stage
from seedream_async.simulator import Simulator, SimulatorConfig, fake_png
from tests.conftest import request, until

N = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_manifest(path: Path, n_inputs: int = N) -> None:
    with path.open("w") as f:
        for n in range(n_inputs):
            req = request(n)
            line = {"prompt": req.prompt, "image_urls": [str(u) for u in req.image_urls]}
            f.write(json.dumps(line) + "\n")


async def run_batch(args: list[str]) -> asyncio.subprocess.Process:
    env = {**os.environ, "APIKLEY_API_KEY": "k"}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "seedream_async.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [15, 60])
async def test_sigkill_and_resume(tmp_path: Path, kill_after: int) -> None:
    manifest, out, journal = tmp_path / "m.jsonl", tmp_path / "r.jsonl", tmp_path / "j.sqlite"
    write_manifest(manifest)
    port = free_port()
    config = SimulatorConfig(latency=(0.2, 0.8), seed=kill_after)
    async with Simulator(config) as sim:
        args = [
            "batch",
            str(manifest),
            "--base-url",
            str(sim.url),
            "--listen",
            f"127.0.0.1:{port}",
            "--journal",
            str(journal),
            "--out",
            str(out),
            "--create-rate",
            "400/1",
            "--max-in-flight",
            "30",
            "--deadline",
            "4",
            "-q",
        ]
        first = await run_batch(args)
        await until(lambda: sim.stats.tasks_created >= kill_after, within=60)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        made_before = sim.stats.tasks_created
        with Journal(journal) as j:
            at_kill = j.counts()
        assert made_before < N  # it really died halfway

        second = await run_batch(args)
        _, err = await second.communicate()
        assert second.returncode in (0, 1), err.decode()

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(N))  # each exactly once
    assert set(sim.stats.tasks_per_request.values()) == {1}  # no input paid twice
    assert set(sim.stats.tasks_per_callback.values()) == {1}  # no callback URL paid twice
    assert sim.stats.tasks_created <= N
    statuses = [line["status"] for line in lines]
    # Only a submission whose answer the killed run never journaled may end unknown.
    assert statuses.count("unknown") <= at_kill.get(Stage.SENDING, 0)
    assert statuses.count("succeeded") + statuses.count("unknown") == N
    with Journal(journal) as j:
        final = j.counts()
    assert set(final) <= {Stage.SUCCEEDED, Stage.UNKNOWN}


MIXED_MODELS = (
    "seedream/4.5-edit",
    "seedream/5-lite-image-to-image",
    "bytedance/seedream-v4-text-to-image",
)


def write_mixed_manifest(path: Path, n: int) -> list[str]:
    """``n`` lines of three models, the edit ones on local files; returns each line's model."""
    for k in range(3):
        (path.parent / f"in{k}.png").write_bytes(fake_png(f"in{k}", 0, 256))
    models = []
    with path.open("w") as f:
        for i in range(n):
            model = MIXED_MODELS[i % 3]
            line: dict[str, object] = {"model": model, "prompt": f"input number {i}"}
            if model == MIXED_MODELS[2]:
                line["max_images"] = 2
            else:
                line["image_urls"] = [f"in{i % 3}.png", f"https://img.example/{i}.png"]
            f.write(json.dumps(line) + "\n")
            models.append(model)
    return models


@pytest.mark.slow
async def test_sigkill_a_mixed_batch_and_resume(tmp_path: Path) -> None:
    """Three models, local files for the edit ones: nothing paid twice, each model honoured."""
    manifest, out, journal = tmp_path / "m.jsonl", tmp_path / "r.jsonl", tmp_path / "j.sqlite"
    n = 60
    models = write_mixed_manifest(manifest, n)
    port = free_port()
    async with Simulator(SimulatorConfig(latency=(0.2, 0.8), seed=30)) as sim:
        args = [
            "batch", str(manifest), "--base-url", str(sim.url), "--listen", f"127.0.0.1:{port}",
            "--journal", str(journal), "--out", str(out), "--create-rate", "400/1",
            "--max-in-flight", "20", "--deadline", "4", "-q",
        ]  # fmt: skip
        first = await run_batch(args)
        await until(lambda: sim.stats.tasks_created >= 20, within=60)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        assert sim.stats.tasks_created < n  # it really died halfway
        second = await run_batch(args)
        _, err = await second.communicate()
        assert second.returncode in (0, 1), err.decode()

    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(n))
    assert set(sim.stats.tasks_per_request.values()) == {1}  # no input paid twice
    assert set(sim.stats.tasks_per_callback.values()) == {1}
    assert sim.stats.uploads <= 2 * 3  # each file once per run at most
    for task in sim.tasks.values():  # every task made is of its input's model
        prompt: str = getattr(task.request, "prompt")  # noqa: B009 (every model here has one)
        assert task.request.model == models[int(prompt.rsplit(" ", 1)[1])]
    for line in lines:
        if line["status"] == "succeeded":
            assert line["model"] == models[line["index"]]
            assert len(line["urls"]) == (2 if models[line["index"]] == MIXED_MODELS[2] else 1)
    statuses = [line["status"] for line in lines]
    assert statuses.count("succeeded") + statuses.count("unknown") == n


STORM = 100
#: The client's own createTask limit (per 2 s) in the storm: six times the account's real one.
CLIENT_RATE = 30


@pytest.mark.slow
async def test_sigkill_in_a_429_storm_strands_no_input(tmp_path: Path) -> None:
    """
    Issue 32 §1: an account whose real createTask limit (5/2 s) is below the configured one
    (30/2 s). Before, the killed run left 80 of 100 rows ``sending`` (inputs waiting out 429s,
    never made) and the rerun waited the whole deadline for callbacks that could never come.
    """
    manifest, out, journal = tmp_path / "m.jsonl", tmp_path / "r.jsonl", tmp_path / "j.sqlite"
    write_manifest(manifest, STORM)
    port = free_port()
    config = SimulatorConfig(latency=(0.2, 0.6), create_limit=(5, 2.0), seed=32)
    async with Simulator(config) as sim:
        args = [
            "batch",
            str(manifest),
            "--base-url",
            str(sim.url),
            "--listen",
            f"127.0.0.1:{port}",
            "--journal",
            str(journal),
            "--out",
            str(out),
            "--create-rate",
            f"{CLIENT_RATE}/2",
            "--deadline",
            "3600",  # far beyond the test's timeout: a rerun waiting for it fails the test
            "-q",
        ]
        first = await run_batch(args)
        await until(lambda: sim.stats.tasks_created >= 10 and sim.stats.rate_limited >= 40, 60)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        made_before = Counter(sim.stats.tasks_per_request)
        sent_before = sim.stats.create_requests
        with Journal(journal) as j:
            possibly_sent = j.counts().get(Stage.SENDING, 0)
        # Only createTasks truly on the wire at the kill: no more than the client's limiter
        # lets out in one window (its 100 connections bound them too).
        assert possibly_sent <= CLIENT_RATE
        assert len(made_before) < STORM  # it really died in the storm

        sim.config.create_limit = None  # the rerun's account has room
        second = await run_batch(args)
        async with asyncio.timeout(300):  # the deadline is 3600 s: it never waited for it
            _, err = await second.communicate()
        assert second.returncode in (0, 1), err.decode()

    made_now = sim.stats.tasks_per_request
    assert set(made_now.values()) == {1}  # no input paid twice
    new = set(made_now) - set(made_before)
    # The rerun sent only inputs the service never made, each once (no 429 this time)...
    assert sim.stats.create_requests - sent_before == len(new)
    # ...and every one of them, but those possibly on the wire at the kill.
    assert len(made_now) >= STORM - possibly_sent
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(line["index"] for line in lines) == list(range(STORM))
    statuses = Counter(line["status"] for line in lines)
    assert statuses["unknown"] <= possibly_sent
    assert statuses["succeeded"] + statuses["unknown"] == STORM
    if possibly_sent:
        assert f"{possibly_sent} submissions may exist" in err.decode()
