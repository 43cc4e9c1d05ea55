"""The seedream-async command line, end to end against the in-process simulator."""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from seedream_async import cli
from seedream_async._journal import Journal

MANIFEST = Path(__file__).parent.parent / "examples" / "manifest.jsonl"


def run(*argv: str) -> int:
    with pytest.raises(SystemExit) as info:
        cli.main(list(argv))
    return int(info.value.code or 0)


def small_manifest(path: Path, n: int = 6) -> Path:
    lines = MANIFEST.read_text().splitlines()[:n]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_batch_simulated(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl")
    out, images = tmp_path / "r.jsonl", tmp_path / "img"
    code = run(
        "batch",
        str(manifest),
        "--simulate",
        "--out",
        str(out),
        "--download-to",
        str(images),
        "--ordered",
        "--create-rate",
        "100/1",
    )
    assert code == 0
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["index"] for line in lines] == list(range(6))
    assert all(line["status"] == "succeeded" for line in lines)
    assert all(Path(line["files"][0]).is_file() for line in lines)
    captured = capsys.readouterr()
    assert "succeeded" in captured.out
    assert str(out) in captured.out
    assert "6 edits" in captured.err


def test_batch_resumes_from_journal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = small_manifest(tmp_path / "m.csv.jsonl", 3)
    journal, out = tmp_path / "j", tmp_path / "r.jsonl"
    args = [
        "batch",
        str(manifest),
        "--simulate",
        "--journal",
        str(journal),
        "--out",
        str(out),
        "-q",
    ]
    assert run(*args) == 0
    assert run(*args) == 0  # a new simulator knows none of them: all come from the journal
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(line.get("from_journal") for line in lines)
    assert "from journal" in capsys.readouterr().out


def test_csv_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "prompt,image_urls,aspect_ratio,quality\n"
        "make it blue,https://a.example/1.png|https://a.example/2.png,16:9,high\n"
        "make it red,https://a.example/3.png,,\n"
    )
    requests = list(cli.read_manifest(manifest))
    assert [len(r.image_urls) for r in requests] == [2, 1]
    assert requests[0].aspect_ratio == "16:9"
    assert run("batch", str(manifest), "--simulate", "-q", "--out", str(tmp_path / "r")) == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            '{"prompt": "ok", "image_urls": ["https://a/b.png"]}\n'
            '\n{"prompt": "x", "image_urls": []}\n',
            ":3: image_urls",
        ),
        ('{"prompt": "ok", "image_urls": ["https://a/b.png"]}\n{oops\n', ":2: not JSON"),
        ('["a list"]\n', ":1: expected a JSON object"),
        (
            '{"prompt": "ok", "image_urls": ["https://a/b.png"], "qualty": "high"}\n',
            ":1: unknown field(s) 'qualty' (did you mean 'quality'?)",
        ),
        (
            '{"prompt": "ok", "image_urls": ["https://a/b.png"], "aspect_ratio": "5:4"}\n',
            ":1: aspect_ratio",
        ),
    ],
)
def test_bad_manifest_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(content)
    assert run("batch", str(manifest), "--simulate") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert message in err[0]


def test_missing_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("batch", "no/such/file.jsonl", "--simulate") == 2
    assert "cannot read manifest" in capsys.readouterr().err


def test_missing_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("APIKLEY_API_KEY", raising=False)
    assert run("credits") == 2
    assert "APIKLEY_API_KEY" in capsys.readouterr().err


def test_unreachable_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("APIKLEY_API_KEY", "k")
    assert run("credits", "--base-url", f"http://127.0.0.1:{port}") == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cannot reach" in err[0]


def test_edit_task_credits(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = run(
        "edit",
        "--simulate",
        "--prompt",
        "blue",
        "--image",
        "https://a.example/x.png",
        "--download-to",
        str(tmp_path),
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task_id"].startswith("task_seedream_")
    assert Path(result["files"][0]).is_file()
    assert run("credits", "--simulate") == 0
    assert float(capsys.readouterr().out) > 0
    assert run("task", "--simulate", "task_unknown") == 3  # a fresh simulator knows no task
    assert "NotFound" in capsys.readouterr().err


def test_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("edit", "--simulate", "--prompt", "", "--image", "https://a/b.png") == 2
    assert "prompt" in capsys.readouterr().err
    assert run("credits", "--simulate", "--listen", "nonsense") == 2
    assert run("batch", "m.jsonl", "--create-rate", "fast") == 2


def test_help_teaches(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("--help") == 0
    text = capsys.readouterr().out
    for word in (
        "batch",
        "edit",
        "task",
        "credits",
        "simulate",
        "--simulate",
        "examples:",
        "JSON Lines",
    ):
        assert word in text


@pytest.mark.parametrize(
    "command",
    [["-m", "seedream_async.cli", "simulate"], ["-m", "seedream_async.simulator"]],
    ids=["cli", "module"],
)
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_simulate_command_serves_counts_and_stops_cleanly(
    command: list[str], stop: signal.Signals
) -> None:
    """One simulator command line, two spellings: knobs, counters, a balance, exit 0."""
    argv = [sys.executable, *command, "--port", "0", "--credits", "100", "--price", "2.5"]
    # A terminal's Ctrl-C, even when this test runs where SIGINT is ignored (a background job
    # of a shell without job control): an ignored signal stays ignored across exec.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGINT, inherited)
    with proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().rsplit(" ", 1)[-1].strip()
            assert url.startswith("http://127.0.0.1:")
            headers = {"Authorization": "Bearer k", "User-Agent": "t"}

            def get(path: str) -> Any:
                request = urllib.request.Request(f"{url}{path}", headers=headers)  # noqa: S310
                with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
                    return json.load(resp)

            assert get("/api/v1/chat/credit")["data"] == 100
            body = json.dumps(
                {
                    "model": "seedream/4.5-edit",
                    "input": {
                        "prompt": "p",
                        "image_urls": ["https://a.example/b.png"],
                        "aspect_ratio": "1:1",
                        "quality": "basic",
                    },
                }
            ).encode()
            create = urllib.request.Request(  # noqa: S310
                f"{url}/api/v1/jobs/createTask",
                data=body,
                headers={**headers, "Content-Type": "application/json"},
            )
            with urllib.request.urlopen(create, timeout=10) as resp:  # noqa: S310
                assert json.load(resp)["code"] == 200
            assert get("/api/v1/chat/credit")["data"] == 97.5  # the balance really goes down
            counters = get("/simulator/stats")
            assert counters["tasks_created"] == 1
            assert counters["paid_twice"] == 0
            assert counters["credits_left"] == 97.5
        finally:
            proc.send_signal(stop)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()  # fail, never hang: leaving the block waits for the process
            raise
    assert proc.returncode == 0
    assert "stopped: tasks_created 1, paid_twice 0" in out


def test_simulate_command_needs_no_cli_extra() -> None:
    """``seedream-async simulate`` serves wherever the library is installed (no rich), as
    ``python -m seedream_async.simulator`` does; the other commands still name the extra."""
    blocked = "import sys; sys.modules['rich'] = None; from seedream_async.cli import main; main()"
    argv = [sys.executable, "-c", blocked]
    proc = subprocess.Popen([*argv, "simulate", "--port", "0"], stdout=subprocess.PIPE, text=True)
    with proc:
        try:
            assert proc.stdout is not None
            assert "serving on http://127.0.0.1:" in proc.stdout.readline()
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert "stopped: tasks_created 0" in out
    done = subprocess.run(
        [*argv, "credits", "--simulate"], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 2
    assert "seedream-async[cli]" in done.stderr


def test_simulate_says_which_settings_match_its_window() -> None:
    """A client's default window is the account's 20 per 10 s: the simulator says what matches
    its own (the snippets against it ran five times slower than it allows)."""
    proc, _ = _simulator("--create-limit", "7/1.5")
    with proc:
        try:
            assert proc.stdout is not None
            proc.stdout.readline()
            line = proc.stdout.readline()
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
    assert "createTask window: 7 per 1.5 s" in line
    assert "Settings(create_rate=7, create_period=1.5)" in line


def test_simulate_help_lists_the_knobs(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("simulate", "--help") == 0
    text = capsys.readouterr().out
    for knob in ("--failure-rate", "--create-limit", "--callback-drop-rate", "--credits"):
        assert knob in text


@pytest.mark.slow
@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_logs_each_task_step(tmp_path: Path, where: str) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 3)
    args = ["batch", str(manifest), "--simulate", "-q", "--out", str(tmp_path / "r.jsonl")]
    args = ["-v", *args] if where == "before" else [*args, "-v"]
    done = subprocess.run(
        [sys.executable, "-m", "seedream_async.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "seedream_async.tasks" in line]
    for step in ("submitted", "createTask sent", "accepted", "resolved by"):
        assert sum(step in line for line in lines) == 3, (step, done.stderr)
    assert "INFO" in lines[0]
    assert "/seedream/callback/" not in done.stderr  # no callback URL, so no token
    assert "Bearer" not in done.stderr


def test_missing_key_suggests_simulate(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("APIKLEY_API_KEY", raising=False)
    manifest = small_manifest(tmp_path / "m.jsonl", 2)
    assert run("batch", str(manifest), "--out", str(tmp_path / "r.jsonl")) == 2
    assert "try --simulate" in capsys.readouterr().err
    assert not (tmp_path / "r.journal").exists()


def test_public_url_without_listen_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 2)
    code = run("batch", str(manifest), "--simulate", "--public-url", "https://hooks.example.com")
    assert code == 2
    assert "--public-url needs --listen" in capsys.readouterr().err


def test_commands_take_only_their_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert run("credits", "--simulate", "--max-in-flight", "5") == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert run("task", "--simulate", "--create-rate", "1/1", "t") == 2
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(commands) == {
        "batch",
        "edit",
        "task",
        "credits",
        "simulate",
        "report",
        "download",
        "models",
    }
    for name, command in commands.items():
        for action in command._actions:
            assert action.help, (name, action.option_strings or action.dest)


def test_task_prints_the_tidy_shape_or_raw(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("APIKLEY_API_KEY", "k")
    proc, url = _simulator("--latency", "0", "0")
    try:
        code = run("edit", "--base-url", url, "--prompt", "p", "--image", "https://a.example/b.png")
        assert code == 0
        task_id = json.loads(capsys.readouterr().out)["task_id"]
        assert run("task", "--base-url", url, task_id) == 0
        tidy = json.loads(capsys.readouterr().out)
        assert tidy["task_id"] == task_id
        assert tidy["state"] == "success"
        assert tidy["urls"]
        assert isinstance(tidy["credits"], float)
        assert "created" in tidy
        assert run("task", "--base-url", url, task_id, "--raw") == 0
        raw = json.loads(capsys.readouterr().out)
        assert raw["taskId"] == task_id
        assert "resultJson" in raw
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_simulate_with_a_journal_in_flight_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 2)
    journal = tmp_path / "j"
    first = next(cli.read_manifest(manifest))
    with Journal(journal) as j:
        j.sending(0, first, "t" * 24)  # an earlier run sent input 0, then died
    before = journal.read_bytes()
    code = run("batch", str(manifest), "--simulate", "--journal", str(journal))
    assert code == 2
    assert "fresh" in capsys.readouterr().err
    assert journal.read_bytes() == before


def test_retry_failed_needs_a_journal(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 2)
    assert run("batch", str(manifest), "--simulate", "--retry-failed") == 2
    assert "--retry-failed needs --journal" in capsys.readouterr().err


def _simulator(*knobs: str) -> tuple[subprocess.Popen[str], str]:
    argv = [sys.executable, "-m", "seedream_async.simulator", "--port", "0", *knobs]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    return proc, proc.stdout.readline().rsplit(" ", 1)[-1].strip()


@pytest.mark.slow
def test_retry_failed_resubmits_only_failed_inputs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("APIKLEY_API_KEY", "k")
    manifest = small_manifest(tmp_path / "m.jsonl", 3)
    journal, out = tmp_path / "j", tmp_path / "r.jsonl"
    args = ["batch", str(manifest), "--journal", str(journal), "--out", str(out), "-q"]
    args += ["--create-rate", "100/1"]
    failing, url = _simulator("--failure-rate", "1", "--latency", "0", "0", "--no-create-limit")
    try:
        assert run(*args, "--base-url", url) == 1
    finally:
        failing.terminate()
        failing.communicate(timeout=10)
    assert all(json.loads(line)["status"] == "failed" for line in out.read_text().splitlines())
    healthy, url = _simulator("--latency", "0", "0", "--no-create-limit")
    try:
        assert run(*args, "--base-url", url) == 1  # without the flag: failed, from the journal
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(line["status"] == "failed" and line["from_journal"] for line in lines)
        assert run(*args, "--base-url", url, "--retry-failed") == 0
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        assert all(line["status"] == "succeeded" for line in lines)
        assert not any(line.get("from_journal") for line in lines)
        assert run(*args, "--base-url", url) == 0  # the journal now says succeeded
        with urllib.request.urlopen(f"{url}/simulator/stats", timeout=10) as resp:  # noqa: S310
            assert json.load(resp)["tasks_created"] == 3
    finally:
        healthy.terminate()
        healthy.communicate(timeout=10)
    err = capsys.readouterr().out
    assert "credits, earlier runs" in err


def test_no_traceback_reaches_the_user(capsys: pytest.CaptureFixture[str]) -> None:
    async def bug(_args: argparse.Namespace) -> int:
        raise RuntimeError("an SDK bug")

    async def disk(_args: argparse.Namespace) -> int:
        raise OSError(28, "No space left on device", "out/results.jsonl")

    for failing, code, words in (
        (bug, 70, "unexpected RuntimeError: an SDK bug"),
        (disk, 2, "No space left on device: out/results.jsonl"),
    ):
        args = cli.build_parser().parse_args(["credits", "--simulate"])
        args.verbose = False
        args.run = failing
        assert cli.run(args) == code
        err = capsys.readouterr().err
        assert words in err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
