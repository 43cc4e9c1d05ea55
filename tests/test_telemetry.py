"""Hooks, INFO logs and OpenTelemetry: what the SDK reports about each edit."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from seedream_async import (
    EditAccepted,
    EditEnded,
    EditQueued,
    EditSent,
    ImagesDownloaded,
    OpenTelemetryHook,
    RateLimitHit,
    SeedreamClient,
    TaskFailed,
    TelemetryEvent,
)
from seedream_async.simulator import Simulator
from tests.conftest import API_KEY, FAST, ClientFactory, request

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:opentelemetry.*")


class Recorder:
    """A hook that keeps every event."""

    def __init__(self) -> None:
        self.events: list[TelemetryEvent] = []

    def __call__(self, event: TelemetryEvent) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


async def test_an_edit_reports_each_step_in_order(make_client: ClientFactory) -> None:
    recorder = Recorder()
    client = make_client(callbacks=True, hooks=[recorder])
    result = await client.edit(request(1))
    await client.aclose()  # the last report runs right after the awaiting code woke
    kinds = [type(e) for e in recorder.events]
    assert kinds == [EditQueued, EditSent, EditAccepted, EditEnded]
    assert len({e.edit for e in recorder.of(EditQueued) + recorder.of(EditEnded)}) == 1
    accepted = recorder.of(EditAccepted)[0]
    assert accepted.task_id == result.task_id
    assert accepted.create_seconds is not None
    assert accepted.create_seconds >= 0
    ended: EditEnded = recorder.of(EditEnded)[0]
    assert (ended.outcome, ended.via, ended.task_id) == ("resolved", "callback", result.task_id)
    assert ended.credits == result.record.credits_consumed
    assert ended.wake_seconds is not None
    assert 0 <= ended.wake_seconds < 1


async def test_edits_one_after_another_never_share_an_edit_id(make_client: ClientFactory) -> None:
    """``edit`` tells live edits apart: none is reused before its edit's ``EditEnded``.

    The next edit starts as soon as the last one's caller wakes, before that edit's
    ``EditEnded`` is reported; a freed edit's identity reused by the next one would end the
    wrong span.
    """
    recorder = Recorder()
    client = make_client(callbacks=True, hooks=[recorder])
    for n in range(5):
        await client.edit(request(n))
    await client.aclose()
    live: set[int] = set()
    for event in recorder.events:
        if isinstance(event, EditQueued):
            assert event.edit not in live, "an edit id reused while its edit was live"
            live.add(event.edit)
        elif isinstance(event, EditEnded):
            live.remove(event.edit)
    assert not live
    assert len(recorder.of(EditEnded)) == 5


async def test_polling_failures_and_429s_are_reported(
    sim: Simulator, make_client: ClientFactory
) -> None:
    recorder = Recorder()
    client = make_client(hooks=[recorder])
    sim.config.failure_rate = 1.0
    with pytest.raises(TaskFailed):
        await client.edit(request(2))
    sim.config.failure_rate = 0.0
    sim.config.create_limit = (1, 0.3)  # tighter than the client's own limiter: 429s
    sim.config.retry_after = 0.35
    for n in range(2):
        await client.edit(request(10 + n))
    await asyncio.sleep(0)  # the last report runs right after the awaiting code woke
    ended = recorder.of(EditEnded)
    assert ended[0].outcome == "failed"
    assert ended[0].via == "poll"
    assert isinstance(ended[0].error, TaskFailed)
    assert [e.outcome for e in ended[1:]] == ["resolved"] * 2
    hits = recorder.of(RateLimitHit)
    assert hits
    assert hits[0].endpoint == "createTask"
    assert sim.stats.rate_limited == len(hits)


async def test_a_failing_hook_never_breaks_an_edit(
    make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(event: TelemetryEvent) -> None:
        raise RuntimeError("the hook's own bug")

    recorder = Recorder()
    client = make_client(hooks=[broken, recorder])
    with caplog.at_level(logging.ERROR, logger="seedream_async"):
        result = await client.edit(request(3))
    assert result.urls
    assert len(recorder.of(EditQueued)) == 1  # the next hook still got every event
    assert "telemetry hook" in caplog.text
    assert "the hook's own bug" in caplog.text


def test_a_hook_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        SeedreamClient(API_KEY, hooks=["not a hook"])  # type: ignore[list-item]


async def test_info_logs_tell_each_step_and_no_secret(
    make_client: ClientFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client(callbacks=True)
    with caplog.at_level(logging.INFO, logger="seedream_async.tasks"):
        result = await client.edit(request(4))
        await client.download(result, tmp_path)
        await client.aclose()
    lines = [r.getMessage() for r in caplog.records if r.name == "seedream_async.tasks"]
    text = "\n".join(lines)
    assert "submitted" in text
    assert f"{result.task_id}: accepted" in text
    assert f"{result.task_id}: resolved by callback" in text
    assert f"{result.task_id}: downloaded 1 image(s)" in text
    assert API_KEY not in caplog.text
    assert "/seedream/callback/" not in caplog.text  # no callback URL, so no token


@pytest.fixture
def otel() -> tuple[OpenTelemetryHook, InMemorySpanExporter, InMemoryMetricReader, Any]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    hook = OpenTelemetryHook(tracer_provider=tracer_provider, meter_provider=meter_provider)
    return hook, exporter, reader, tracer_provider.get_tracer("the user's service")


def _points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    assert data is not None
    found: dict[str, list[Any]] = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


async def test_opentelemetry_spans_and_metrics(
    sim: Simulator,
    make_client: ClientFactory,
    tmp_path: Path,
    otel: tuple[OpenTelemetryHook, InMemorySpanExporter, InMemoryMetricReader, Any],
) -> None:
    hook, exporter, reader, tracer = otel
    client = make_client(callbacks=True, hooks=[hook])
    with tracer.start_as_current_span("handle request") as parent:
        results = [await client.edit(request(n)) for n in range(3)]
        sim.config.failure_rate = 1.0
        with pytest.raises(TaskFailed):
            await client.edit(request(9))
    await client.download(results[0], tmp_path)
    await client.aclose()

    spans = exporter.get_finished_spans()
    edits = [s for s in spans if s.name == "seedream.edit"]
    assert len(edits) == 4
    for span in edits:  # children of the span current at submit time
        assert span.parent is not None
        assert span.parent.span_id == parent.get_span_context().span_id
        assert span.attributes is not None
        assert span.attributes["gen_ai.request.model"] == "seedream/4.5-edit"
        assert span.start_time is not None
        assert span.end_time is not None
        assert span.start_time <= span.end_time
        assert [e.name for e in span.events][:2] == ["createTask sent", "accepted"]
    ok = {s.attributes["seedream.task.id"]: s for s in edits[:3] if s.attributes}
    assert set(ok) == {r.task_id for r in results}
    assert all(s.attributes and s.attributes["seedream.outcome"] == "resolved" for s in edits[:3])
    assert all(
        s.attributes and s.attributes["seedream.resolved_by"] == "callback" for s in ok.values()
    )
    failed = edits[3]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "TaskFailed"
    downloads = [s for s in spans if s.name == "seedream.download"]
    assert len(downloads) == 1
    assert downloads[0].attributes is not None
    assert downloads[0].attributes["seedream.task.id"] == results[0].task_id

    points = _points(reader)
    assert sum(p.value for p in points["seedream.tasks.in_flight"]) == 0
    assert sum(p.value for p in points["seedream.tasks.queued"]) == 0
    assert sum(p.count for p in points["seedream.create_task.duration"]) == 4
    ended = {
        (p.attributes["seedream.outcome"], p.attributes.get("seedream.resolved_by")): p.value
        for p in points["seedream.tasks.ended"]
    }
    assert ended[("resolved", "callback")] == 3
    assert sum(v for (outcome, _), v in ended.items() if outcome == "failed") == 1
    assert sum(p.count for p in points["seedream.wake.duration"]) == 4
    paid = sum(r.record.credits_consumed or 0 for r in results)
    assert sum(p.value for p in points["seedream.credits.consumed"]) == pytest.approx(paid)
    assert sum(p.count for p in points["seedream.download.duration"]) == 1


async def test_the_users_trace_configs_keep_working(
    sim: Simulator,
    otel: tuple[OpenTelemetryHook, InMemorySpanExporter, InMemoryMetricReader, Any],
) -> None:
    hook, exporter, _, _ = otel
    seen: list[str] = []

    async def on_request_start(
        _session: aiohttp.ClientSession, _ctx: Any, params: aiohttp.TraceRequestStartParams
    ) -> None:
        seen.append(params.url.path)

    async def on_chunk(
        _session: aiohttp.ClientSession, _ctx: Any, params: aiohttp.TraceResponseChunkReceivedParams
    ) -> None:
        chunks.append(params.url.path)

    chunks: list[str] = []
    trace_config = aiohttp.TraceConfig()
    trace_config.on_request_start.append(on_request_start)
    trace_config.on_response_chunk_received.append(on_chunk)
    async with (
        aiohttp.ClientSession(trace_configs=[trace_config]) as session,
        SeedreamClient(
            API_KEY, base_url=sim.url, session=session, settings=FAST, hooks=[hook]
        ) as client,
    ):
        await client.edit(request(5))
    assert any(path.endswith("/createTask") for path in seen)
    assert any(path.endswith("/recordInfo") for path in seen)
    assert any(path.endswith("/createTask") for path in chunks)  # every answer read traced
    assert [s.name for s in exporter.get_finished_spans()] == ["seedream.edit"]


def test_importing_the_package_loads_no_opentelemetry() -> None:
    code = (
        "import sys, seedream_async; print(any(m.startswith('opentelemetry') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_images_downloaded_reports_a_failure(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    recorder = Recorder()
    client = make_client(hooks=[recorder])
    result = await client.edit(request(6))
    sim.config.file_status = 404
    with pytest.raises(Exception, match=r"404|HTTP"):
        await client.download(result, tmp_path)
    (event,) = recorder.of(ImagesDownloaded)
    assert event.task_id == result.task_id
    assert event.error is not None
    assert event.paths == ()


async def test_the_span_names_the_model_asked_for(
    make_client: ClientFactory,
    otel: tuple[OpenTelemetryHook, InMemorySpanExporter, InMemoryMetricReader, Any],
) -> None:
    hook, exporter, _, _ = otel
    async with make_client(hooks=[hook]) as client:
        await client.generate(prompt="a cat", model="bytedance/seedream-v4-text-to-image")
        await client.edit(request(1))
    models = [s.attributes["gen_ai.request.model"] for s in exporter.get_finished_spans()
              if s.name == "seedream.edit" and s.attributes is not None]  # fmt: skip
    assert models == ["bytedance/seedream-v4-text-to-image", "seedream/4.5-edit"]
