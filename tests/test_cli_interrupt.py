"""Ctrl-C in ``batch``, and the rerun after it, as a user meets them."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_cli import _simulator, run, small_manifest


def _stats(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/simulator/stats", timeout=10) as resp:  # noqa: S310
        stats: dict[str, float] = json.load(resp)
    return stats


def _interrupted_batch(args: list[str], created: int, url: str | None = None) -> str:
    """Run ``batch`` in a process of its own, Ctrl-C it once the service holds ``created``
    tasks, and return its stderr."""
    argv = [sys.executable, "-m", "seedream_async.cli", "batch", *args]
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # see test_cli
    try:
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    with proc:
        try:
            assert proc.stderr is not None
            assert " edits from " in proc.stderr.readline()  # the run has begun
            deadline = time.monotonic() + 60
            while url is not None and _stats(url)["tasks_created"] < created:
                assert proc.poll() is None
                assert time.monotonic() < deadline
                time.sleep(0.02)  # another process's state: nothing to wait on but polling
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=60)
        except BaseException:
            proc.kill()
            raise
    assert proc.returncode == 130, err
    return err


def _row(out: str, name: str) -> str:
    found = re.search(rf"{re.escape(name)}\s*│\s*(\S+)", out)
    assert found, out
    return found.group(1)


@pytest.mark.slow
def test_ctrl_c_names_the_journal_and_the_rerun_counts_earlier_credits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("APIKLEY_API_KEY", "k")
    manifest = small_manifest(tmp_path / "m.jsonl", 4)
    out = tmp_path / "r.jsonl"
    proc, url = _simulator("--latency", "4", "4", "--no-create-limit", "--price", "2")
    try:
        args = [str(manifest), "--base-url", url, "--out", str(out), "-q"]
        args += ["--create-rate", "100/1"]
        monkeypatch.setenv("APIKLEY_BASE_URL", url)
        err = _interrupted_batch(args, created=4, url=url)
        journal = out.with_suffix(".journal")  # the default: no --journal was given
        assert "--journal" not in err
        assert str(journal) in err
        assert "same command" in err
        assert run("batch", *args) == 0
        printed = capsys.readouterr().out
        assert _stats(url)["tasks_created"] == 4  # nothing sent twice
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert _row(printed, "resumed") == "4"
    assert _row(printed, "credits, this run") == "0"
    assert _row(printed, "credits, earlier runs") == "8"


@pytest.mark.slow
def test_ctrl_c_of_a_simulated_batch_does_not_point_at_a_refusal(tmp_path: Path) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 40)
    journal, out = tmp_path / "j", tmp_path / "r.jsonl"
    args = [str(manifest), "--simulate", "--journal", str(journal), "--out", str(out), "-q"]
    err = _interrupted_batch(args, created=0)
    rerun = subprocess.run(
        [sys.executable, "-m", "seedream_async.cli", "batch", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if rerun.returncode == 2:  # refused: tasks in flight died with the simulator
        assert "same command" not in err
        assert "new --journal" in err
    else:
        assert rerun.returncode == 0, rerun.stderr
        assert "same command" in err
