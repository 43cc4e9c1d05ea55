"""The simulator on its own: served by ``python -m``, and its bookkeeping."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import aiohttp
import attrs
import pytest
from yarl import URL

import seedream_async
from seedream_async import EditRequest, EditResult, NotFound, SeedreamClient, Settings
from seedream_async.simulator import Simulator, SimulatorConfig, SimulatorStats
from tests.conftest import API_KEY, FAST, request


async def test_served_alone_by_python_m() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "seedream_async.simulator",
        "--port",
        "0",
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        url = line.rsplit(" ", 1)[-1].strip()
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bearer k", "User-Agent": "test"}
            async with session.get(f"{url}/api/v1/chat/credit", headers=headers) as resp:
                assert (await resp.json())["code"] == 200
            async with session.get(f"{url}/api/v1/chat/credit") as resp:
                assert resp.status == 200  # aiohttp sends a User-Agent of its own
                assert (await resp.json())["code"] == 401
    finally:
        proc.terminate()
        await proc.wait()


def test_peak_poll_rate() -> None:
    stats = SimulatorStats(poll_times=[0.0, 0.1, 0.2, 1.05, 1.1, 3.0])
    assert stats.peak_poll_rate(1.0) == 3
    assert stats.peak_poll_rate(0.1) == 2
    assert SimulatorStats().peak_poll_rate() == 0


async def test_result_images_are_real_pngs_shaped_like_the_request(tmp_path: Path) -> None:
    """Pipelines that open the images work: `file` says "PNG image data"."""
    async with Simulator(SimulatorConfig()) as sim:
        settings = Settings(allow_private_downloads=True)
        async with SeedreamClient("k", base_url=sim.url, settings=settings) as client:
            for ratio, shape in (("1:1", (64, 64)), ("16:9", (114, 64)), ("3:4", (64, 85))):
                request = EditRequest(
                    prompt="p", image_urls=["https://a.example/x.png"], aspect_ratio=ratio
                )
                task_id = await client.create_task(request)
                (path,) = await client.download(_result(sim, task_id), tmp_path)
                data = path.read_bytes()
                assert data.startswith(b"\x89PNG\r\n\x1a\n")
                assert data[12:16] == b"IHDR"
                assert struct.unpack(">II", data[16:24]) == shape
                assert len(data) == sim.config.image_size
                assert zlib.crc32(data[12:29]) == struct.unpack(">I", data[29:33])[0]


def _result(sim: Simulator, task_id: str) -> EditResult:
    record = sim.record(task_id)
    return EditResult(task_id=task_id, urls=record.result_urls, record=record)


def test_version() -> None:
    assert seedream_async.__version__ != "0+unknown"
    out = subprocess.run(
        [sys.executable, "-m", "seedream_async.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"seedream-async {seedream_async.__version__}"


async def test_finished_tasks_are_forgotten_after_their_ttl() -> None:
    """A long run keeps the simulator bounded: tasks (and their counts) go after a TTL."""
    async with (
        Simulator(SimulatorConfig(task_ttl=0.2)) as sim,
        SeedreamClient(API_KEY, base_url=sim.url, settings=FAST) as client,
    ):
        first = await client.edit(request(0))
        assert first.task_id in sim.tasks
        await asyncio.sleep(0.3)
        await client.edit(request(1))  # each create sweeps what expired
        assert first.task_id not in sim.tasks
        assert len(sim.tasks) == 1
        assert len(sim.stats.tasks_per_request) == 1
        assert sim.stats.tasks_created == 2
        with pytest.raises(NotFound):
            await client.get_task(first.task_id)


HEADERS = {"Authorization": "Bearer k", "User-Agent": "test"}
STREAM = "/file-upload/api/file-stream-upload"
BASE64 = "/file-upload/api/file-base64-upload"


def _no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logged = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert logged == [], [r.getMessage() for r in logged]


async def _post(sim: Simulator, path: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    headers = {**HEADERS, "Content-Type": content_type}
    async with (
        aiohttp.ClientSession() as session,
        session.post(sim.url.with_path(path), data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.read()


async def test_a_file_number_in_non_ascii_digits_is_a_404(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    """`'²'.isdigit()` holds and `int('²')` raises: the file route answered 500."""
    task_id = (await sim_client_task(sim)).task_id
    async with aiohttp.ClientSession() as session:
        for n in ("%C2%B2", "%D9%A1", "%EF%BC%91", "0"):
            url = sim.url.with_path(f"/files/{task_id}/{n}.png", encoded=True)
            async with session.get(url) as resp:
                assert resp.status == (200 if n == "0" else 404)
    _no_traceback(caplog)


async def sim_client_task(sim: Simulator) -> EditResult:
    settings = attrs.evolve(FAST, allow_private_downloads=True)
    async with SeedreamClient(API_KEY, base_url=sim.url, settings=settings) as client:
        return await client.edit(request(0))


@pytest.mark.parametrize("path", ["/api/v1/jobs/createTask", BASE64])
async def test_json_nested_100_000_deep_is_a_400(
    sim: Simulator, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    status, body = await _post(sim, path, b"[" * 100_000, "application/json")
    assert status == 200
    assert json.loads(body)["code"] == 400
    assert sim.stats.tasks_created == 0
    _no_traceback(caplog)


@pytest.mark.parametrize(
    "part_head",
    [
        b"Broken header line",  # no colon: aiohttp's InvalidHeader
        b'Content-Disposition: form-data; name="file"; filename=',  # a bad disposition
        b"Content-Disposition: \xff\xfe",
    ],
    ids=["no-colon", "bad-disposition", "not-utf8"],
)
async def test_a_multipart_upload_with_a_malformed_part_header_is_a_400(
    sim: Simulator, caplog: pytest.LogCaptureFixture, part_head: bytes
) -> None:
    body = (
        b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        + part_head
        + b"\r\n\r\n\x89PNG\r\n\x1a\nxx\r\n--XX--\r\n"
    )
    status, answer = await _post(sim, STREAM, body, "multipart/form-data; boundary=XX")
    assert status in {200, 400}
    if status == 200:
        assert json.loads(answer)["code"] == 400
    assert sim.stats.uploads == 0
    _no_traceback(caplog)


@pytest.mark.parametrize("folder", ["..", "../x", "a/../b", "/abs", "/", ".", "x/..", "%2e%2e"])
@pytest.mark.parametrize("path", [STREAM, BASE64])
async def test_an_upload_path_that_climbs_or_is_absolute_is_refused(
    sim: Simulator, folder: str, path: str
) -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(100)
    if path == STREAM:
        form = aiohttp.FormData()
        form.add_field("uploadPath", folder)
        form.add_field("file", png, filename="a.png", content_type="image/png")
        async with (
            aiohttp.ClientSession() as session,
            session.post(sim.url.with_path(path), data=form, headers=HEADERS) as resp,
        ):
            answer = await resp.json()
    else:
        data = "data:image/png;base64," + base64.b64encode(png).decode()
        body = json.dumps({"base64Data": data, "uploadPath": folder, "fileName": "a.png"})
        answer = json.loads((await _post(sim, path, body.encode(), "application/json"))[1])
    if folder == "%2e%2e":  # a name of its own, not a climb: kept under /uploads/
        assert answer["code"] == 200
        assert URL(answer["data"]["downloadUrl"]).path.startswith("/uploads/")
        return
    assert answer["code"] == 400
    assert answer["data"] is None
    assert sim.uploaded == {}


async def test_binding_every_interface_warns(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "seedream_async.simulator")
    async with Simulator() as quiet:
        assert quiet.url.host == "127.0.0.1"
    assert caplog.records == []
    sim = Simulator()
    try:
        await sim.start("0.0.0.0", 0)  # noqa: S104 (the warning under test)
    finally:
        await sim.aclose()
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "0.0.0.0" in record.getMessage()  # noqa: S104 (the address it names)
    assert "any API key" in record.getMessage()


async def test_the_command_line_warns_when_bound_to_every_interface() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "seedream_async.simulator", "--host", "0.0.0.0",  # noqa: S104
        "--port", "0", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode()
        assert "serving on" in line
    finally:
        proc.terminate()
        _, err = await proc.communicate()
    assert "reachable from other hosts" in err.decode()
