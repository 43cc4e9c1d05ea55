"""The contact sheet: ``seedream-async report`` and ``batch --report``, from the outside."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from seedream_async._report import PAGE_SIZE, LiveReport, write_report
from seedream_async.simulator import fake_png
from tests.test_cli import _simulator, run, small_manifest

HOSTILE = "<script>alert('x')</script>"


def line(index: int, status: str = "succeeded", **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"index": index, "status": status, "prompt": f"edit {index}"}
    return base | fields


def results_file(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def cards(page: str) -> list[str]:
    return re.findall(r'<article class="card [^"]*" id="i-(\d+)" data-status="([^"]*)"', page)


def test_results_text_is_escaped_and_only_http_urls_are_links(tmp_path: Path) -> None:
    hostile = [
        line(
            0,
            "failed",
            prompt=HOSTILE,
            fail_code='<img src=x onerror="alert(1)">',
            fail_msg="</p><script>alert(2)</script>",
            task_id='"><script>alert(3)</script>',
            inputs=["javascript:alert(4)", "https://ok.example/a.png?x=<b>"],
        ),
        line(1, urls=["javascript:alert(5)", "https://ok.example/r.png"], model="<b>m</b>"),
        line(2, "<script>", error="<iframe src=//evil.example>"),
    ]
    results = results_file(tmp_path / "r.jsonl", hostile)
    assert run("report", str(results), "--out", str(tmp_path / "out.html")) == 0
    page = (tmp_path / "out.html").read_text()
    assert "<script" not in page.lower()
    assert "<iframe" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page  # the prompt, as text
    assert "onerror=" not in page.replace("onerror=&quot;", "")
    hrefs = re.findall(r'href="([^"]*)"', page)
    assert "https://ok.example/r.png" in hrefs
    assert "https://ok.example/a.png?x=&lt;b&gt;" in hrefs
    assert not [h for h in hrefs if "javascript" in h.lower()]
    assert all(h.startswith(("https://", "#", "out")) for h in hrefs), hrefs


def test_failed_and_unknown_first_in_pages_of_500(tmp_path: Path) -> None:
    statuses = ["succeeded"] * 1100 + ["failed"] * 60 + ["unknown"] * 40 + ["error"] * 1
    lines = [line(n, s) for n, s in enumerate(statuses)]
    written = write_report(lines, tmp_path / "report.html")
    assert [p.name for p in written.pages] == ["report.html", "report-2.html", "report-3.html"]
    pages = [p.read_text() for p in written.pages]
    shown = [c for page in pages for c in cards(page)]
    assert len(shown) == len(lines)
    assert [len(cards(p)) for p in pages] == [PAGE_SIZE] * 2 + [201]
    order = [status for _, status in shown]
    assert order[:101] == ["failed"] * 60 + ["unknown"] * 40 + ["error"]
    assert set(order[101:]) == {"succeeded"}
    assert [int(i) for i, _ in shown[:60]] == list(range(1100, 1160))  # by input within
    first = pages[0]
    assert 'href="#s-failed"' in first
    assert 'href="#s-unknown"' in first
    assert 'href="report-2.html"' in first
    assert 'href="report-3.html"' in first
    assert 'href="#s-succeeded"' in first  # the succeeded ones start on page 1 too
    assert 'href="report.html#s-failed"' in pages[2]


def test_header_counts_credits_and_time(tmp_path: Path) -> None:
    lines = [
        line(0, credits=1.25, created="2026-01-01T00:00:00+00:00", at=1767225602.0),
        line(1, credits=1.25, at=1767225610.0),
        line(2, credits=2.5, from_journal=True),
        line(3, "failed", credits=0.5, at=1767225606.0),
        line(4, credits=1.0, resumed=True, at=1767225604.0),
    ]
    page = write_report(lines, tmp_path / "r.html").pages[0].read_text()
    text = re.sub(r"<[^>]+>", "", page)
    assert "results: 5" in text
    assert "succeeded: 4" in text
    assert "failed: 1" in text
    assert "credits, this run: 3" in text  # 1.25 + 1.25 + 0.5, the journal's excluded
    assert "credits, earlier runs: 3.5" in text  # the journal's, and the resumed task's
    assert "credits charged for failures: 0.5" in text
    assert "wall time: 10.0 s" in text  # from the first creation to the last result
    assert "throughput: 24.0 / min" in text  # 4 results of this run in 10 s
    assert "(sent by an earlier run)" in page
    assert page.count("<polyline") == 2


def test_thumbnails_are_small_files_beside_the_page(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(fake_png("t", 0, 200_000, "16:9"))
    lines = [line(0, inputs=["in.png"], files=[str(image)]), line(1, inputs=["gone.png"])]
    out = tmp_path / "site" / "sheet.html"
    written = write_report(lines, out, bases=[tmp_path])
    thumbs = list((tmp_path / "site" / "sheet_files").iterdir())
    assert len(thumbs) == 1
    assert written.thumbnails_made == 1  # one file, shown twice
    assert thumbs[0].stat().st_size < 8 * 1024
    page = out.read_text()
    assert page.count(f'src="sheet_files/{thumbs[0].name}"') == 2
    assert 'loading="lazy"' in page
    assert "missing file" in page
    again = write_report(lines, out, bases=[tmp_path])
    assert again.thumbnails_made == 0  # reused on the next rewrite


def test_bad_lines_are_counted_and_a_missing_file_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "r.jsonl"
    results.write_text('{"index": 0, "status": "succeeded"}\nnot json\n[1]\n\n')
    assert run("report", str(results), "--out", str(tmp_path / "r.html")) == 0
    assert "2 line(s) of the results were not JSON objects" in (tmp_path / "r.html").read_text()
    assert run("report", str(tmp_path / "missing.jsonl")) == 2
    assert "cannot read results" in capsys.readouterr().err


def test_without_pillow_the_page_says_how_to_install_it(tmp_path: Path) -> None:
    image = tmp_path / "in.png"
    image.write_bytes(fake_png("t", 0, 1000))
    results = results_file(tmp_path / "r.jsonl", [line(0, inputs=[str(image)])])
    blocked = (
        "import sys; sys.modules['PIL'] = None; "  # import PIL now raises ImportError
        "from seedream_async.cli import main; main(sys.argv[1:])"
    )
    argv = [
        sys.executable,
        "-c",
        blocked,
        "report",
        str(results),
        "--out",
        str(tmp_path / "p.html"),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install 'seedream-async[report]'" in done.stderr
    page = (tmp_path / "p.html").read_text()
    assert "they need Pillow" in page
    assert "seedream-async[report]" in page
    assert "<img" not in page
    assert not (tmp_path / "p_files").exists()


async def test_live_report_is_rewritten_at_most_every_five_seconds(
    tmp_path: Path, virtual_clock: Callable[[float], None]
) -> None:
    out = tmp_path / "live.html"
    report = LiveReport(out, total=3)
    report.start()
    await _settled(report)
    assert report.writes == 1
    assert "results: 0 of 3" in _text(out)
    report.add(line(0))
    virtual_clock(4.9)
    report.add(line(1))
    await _settled(report)
    assert report.writes == 1  # not yet: the last rewrite is under 5 s old
    virtual_clock(0.2)
    report.add(line(2, "failed"))
    await _settled(report)
    assert report.writes == 2
    assert "results: 3 of 3" in _text(out)
    await report.finish()
    assert report.writes == 3
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


async def _settled(report: LiveReport) -> None:
    writing = report._writing
    if writing is not None:
        await writing


def _text(page: Path) -> str:
    return re.sub(r"<[^>]+>", "", page.read_text())


def test_batch_report_after_a_resumed_rerun_covers_every_input(tmp_path: Path) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 4)
    journal, out, report = tmp_path / "j", tmp_path / "r.jsonl", tmp_path / "report.html"
    args = ["batch", str(manifest), "--simulate", "--journal", str(journal), "--out", str(out)]
    args += ["-q", "--create-rate", "100/1", "--report", str(report)]
    assert run(*args) == 0
    first = report.read_text()
    assert len(cards(first)) == 4
    assert "seedream/4.5-edit" in first
    assert "1:1 / high" in first
    assert run(*args) == 0  # every outcome now comes from the journal
    again = report.read_text()
    assert sorted(int(i) for i, _ in cards(again)) == [0, 1, 2, 3]
    assert again.count("(earlier run)") == 4
    assert "credits, earlier runs: 5" in _text(report)


def test_results_lines_carry_what_the_report_shows(tmp_path: Path) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 2)
    out = tmp_path / "r.jsonl"
    args = ["batch", str(manifest), "--simulate", "--out", str(out), "-q"]
    assert run(*args, "--create-rate", "100/1") == 0
    for entry in map(json.loads, out.read_text().splitlines()):
        assert {"aspect_ratio", "quality", "model", "created", "completed", "at"} <= set(entry)


def test_a_page_that_cannot_be_written_is_refused_before_anything_is_paid(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 2)
    out = tmp_path / "r.jsonl"
    (tmp_path / "page").mkdir()
    args = ["batch", str(manifest), "--simulate", "--out", str(out), "-q"]
    assert run(*args, "--report", str(tmp_path / "page")) == 2
    assert "--report" in capsys.readouterr().err
    assert not out.exists()  # nothing ran
    results = results_file(tmp_path / "done.jsonl", [line(0)])
    assert run("report", str(results), "--out", str(tmp_path / "page")) == 2
    assert "is a directory" in capsys.readouterr().err


def test_pages_are_named_after_the_page_asked_for(tmp_path: Path) -> None:
    lines = [line(n) for n in range(PAGE_SIZE + 1)]
    written = write_report(lines, tmp_path / "my sheet#1")
    assert [p.name for p in written.pages] == ["my sheet#1", "my sheet#1-2.html"]
    assert 'href="my%20sheet%231-2.html"' in written.pages[0].read_text()


@pytest.mark.slow
def test_ctrl_c_leaves_the_page_as_far_as_the_batch_got(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("APIKLEY_API_KEY", "k")
    manifest = small_manifest(tmp_path / "m.jsonl", 8)
    out, report = tmp_path / "r.jsonl", tmp_path / "report.html"
    sim, url = _simulator("--latency", "0.5", "20", "--no-create-limit", "--seed", "2")
    argv = [sys.executable, "-m", "seedream_async.cli", "batch", str(manifest), "--base-url", url]
    argv += ["--out", str(out), "--report", str(report), "--create-rate", "100/1", "-q"]
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)  # see test_cli
    try:
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    try:
        deadline = time.monotonic() + 60
        while not (out.exists() and out.read_text().count("\n") >= 1):
            assert proc.poll() is None
            assert time.monotonic() < deadline
            time.sleep(0.02)  # another process's file: nothing to wait on but polling
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        sim.terminate()
        sim.communicate(timeout=10)
    assert proc.returncode == 130, err
    written = [json.loads(x)["index"] for x in out.read_text().splitlines()]
    assert 0 < len(written) < 8
    assert sorted(int(i) for i, _ in cards(report.read_text())) == sorted(written)
    assert f"results: {len(written)} of 8" in _text(report)
