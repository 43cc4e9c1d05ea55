"""``seedream-async download``: an earlier run's images, fetched late, each input judged alone."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.test_cli import _simulator, run, small_manifest


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def write(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def downloads(url: str) -> int:
    with urllib.request.urlopen(f"{url}/simulator/stats", timeout=10) as resp:  # noqa: S310
        return int(json.load(resp)["downloads"])


@pytest.mark.slow
def test_download_fetches_what_is_missing_and_reports_expired_inputs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("APIKLEY_API_KEY", "k")
    monkeypatch.setenv("SEEDREAM_ALLOW_PRIVATE_DOWNLOADS", "1")  # the simulator is on loopback
    manifest, results, images = (
        small_manifest(tmp_path / "m.jsonl", 6),
        tmp_path / "r.jsonl",
        tmp_path / "img",
    )
    sim, url = _simulator("--latency", "0", "0", "--no-create-limit")
    try:
        argv = ["batch", str(manifest), "--base-url", url, "--out", str(results), "-q"]
        assert run(*argv, "--ordered", "--create-rate", "100/1") == 0
        lines = read(results)
        kept = tmp_path / "kept.png"
        kept.write_bytes(b"an image downloaded by the batch itself")
        lines[0]["files"] = [str(kept)]  # still on disk: not fetched again
        two_days_ago = (datetime.now(UTC) - timedelta(days=2)).isoformat()
        for n in (1, 2):  # results the simulator no longer has (404)
            lines[n]["urls"] = [f"{url}/files/task_gone_{n}/0.png"]
            lines[n]["task_id"] = f"task_gone_{n}"
        lines[1]["completed"] = two_days_ago
        lines[2]["at"] = time.time()
        lines[2].pop("completed")
        lines[3]["status"] = "download_failed"
        lines[3]["error"] = "DownloadError: download of ... failed: HTTP 503"
        write(results, lines)
        capsys.readouterr()
        assert run("download", str(results), "--to", str(images)) == 1
        out, err = capsys.readouterr()
        assert "input 1: expired, 48 h old: " in err
        assert "HTTP 404" in err
        assert "input 2: failed, 0 h old: " in err
        assert "downloaded 3, present 1, expired 1, failed 1, no result 0" in out
        after = read(results)
        for n in (3, 4, 5):
            (file,) = after[n]["files"]
            assert file == str(images / f"{n:06d}_0.png")
            assert Path(file).read_bytes().startswith(b"\x89PNG")
            owner = json.loads((images / f".{n:06d}_0.png.owner").read_text())
            assert owner["task_id"] == lines[n]["task_id"]
        assert after[3]["status"] == "succeeded"
        assert "error" not in after[3]
        assert after[0]["files"] == [str(kept)]
        assert "files" not in after[1]
        fetched = downloads(url)
        assert run("download", str(results), "--to", str(images)) == 1  # again: nothing new
        assert downloads(url) == fetched  # the files on disk are not fetched again
        assert "downloaded 0, present 4" in capsys.readouterr().out
    finally:
        sim.terminate()
        sim.communicate(timeout=10)


def test_download_keeps_the_ssrf_guard(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("SEEDREAM_ALLOW_PRIVATE_DOWNLOADS", raising=False)
    results = tmp_path / "r.jsonl"
    line = {"index": 0, "status": "succeeded", "task_id": "t", "at": time.time()}
    write(results, [line | {"urls": ["http://127.0.0.1:9/files/t/0.png"]}])
    assert run("download", str(results), "--to", str(tmp_path / "img")) == 1
    assert "refused: 127.0.0.1 is a loopback address" in capsys.readouterr().err
    assert not list((tmp_path / "img").glob("*.png"))


def test_download_refuses_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text('{"index": 0}\nnot json\n')
    assert run("download", str(results), "--to", str(tmp_path / "img")) == 2
    assert "1 line(s) are not JSON objects" in capsys.readouterr().err
    assert results.read_text() == '{"index": 0}\nnot json\n'
    (tmp_path / "file").write_text("")
    assert run("download", str(results), "--to", str(tmp_path / "file")) == 2
    assert "is not a directory" in capsys.readouterr().err
