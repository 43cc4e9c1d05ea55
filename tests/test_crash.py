"""kill -9 at any moment loses nothing and pays nothing twice."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
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


def write_manifest(path: Path) -> None:
    with path.open("w") as f:
        for n in range(N):
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
