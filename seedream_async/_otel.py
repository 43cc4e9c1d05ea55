"""
OpenTelemetry for the SDK, as one telemetry hook (the ``otel`` extra: the API only).

One span per edit, from submit to outcome, child of whatever span was current when the
edit was submitted; its events mark createTask going out and the acceptance; a download
gets a span of its own. Metrics follow the SDK's own vocabulary (tasks in flight and
queued, createTask latency, 429s, what resolved each task, wake latency, credits). Nothing
from OpenTelemetry is imported until a hook is made, and no SDK part of it ever: the
application chooses its exporters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from ._errors import ExtraNotInstalled
from ._models import TaskRequest
from ._telemetry import (
    EditAccepted,
    EditAnswerLost,
    EditEnded,
    EditQueued,
    EditSent,
    ImagesDownloaded,
    RateLimitHit,
    TelemetryEvent,
)

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import Span, TracerProvider

_INSTALL = "pip install 'seedream-async[otel]'"
_SCOPE = "seedream_async"

#: Span attributes (OpenTelemetry's where one exists: ``gen_ai.*``, ``error.type``).
TASK_ID = "seedream.task.id"
OUTCOME = "seedream.outcome"
RESOLVED_BY = "seedream.resolved_by"


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


class OpenTelemetryHook:
    """
    Spans and metrics for every edit; pass it in ``SeedreamClient(hooks=[...])``.

    Uses the global tracer and meter providers unless given others. Needs the ``otel``
    extra (``pip install 'seedream-async[otel]'``, the OpenTelemetry API).
    """

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        try:
            from opentelemetry import metrics, trace  # noqa: PLC0415 (the optional extra)
        except ImportError:
            raise ExtraNotInstalled(f"OpenTelemetryHook needs the otel extra: {_INSTALL}") from None
        from . import __version__  # noqa: PLC0415 (the package imports this module)

        self._trace = trace
        provider = tracer_provider or trace.get_tracer_provider()
        self._tracer = provider.get_tracer(_SCOPE, __version__)
        meter = (meter_provider or metrics.get_meter_provider()).get_meter(_SCOPE, __version__)
        self._in_flight = meter.create_up_down_counter(
            "seedream.tasks.in_flight", unit="{task}", description="Tasks the service has"
        )
        self._queued = meter.create_up_down_counter(
            "seedream.tasks.queued",
            unit="{task}",
            description="Submissions waiting for a slot or the createTask limiter",
        )
        self._create = meter.create_histogram(
            "seedream.create_task.duration", unit="s", description="createTask latency"
        )
        self._rate_limited = meter.create_counter(
            "seedream.rate_limited", unit="{response}", description="429 answers"
        )
        self._ended = meter.create_counter(
            "seedream.tasks.ended",
            unit="{task}",
            description="Tasks ended, by outcome and by what told (callback, poll, fleet)",
        )
        self._wake = meter.create_histogram(
            "seedream.wake.duration",
            unit="s",
            description="From an outcome arriving to the awaiting code running",
        )
        self._credits = meter.create_counter(
            "seedream.credits.consumed", unit="{credit}", description="Credits paid"
        )
        self._downloads = meter.create_histogram(
            "seedream.download.duration", unit="s", description="Saving a result's images"
        )
        #: The live edits: their span, and whether they count as queued or in flight.
        self._spans: dict[int, Span] = {}
        self._queued_edits: set[int] = set()
        self._flying_edits: set[int] = set()

    def __call__(self, event: TelemetryEvent) -> None:
        """Record one event."""
        match event:
            case EditQueued():
                self._start(event.edit, event.time, event.request)
                self._queued_edits.add(event.edit)
                self._queued.add(1)
            case EditSent():
                self._unqueue(event.edit)
                if (span := self._spans.get(event.edit)) is not None:
                    span.add_event("createTask sent", timestamp=_ns(event.time))
            case EditAccepted():
                span = self._spans.get(event.edit) or self._start(event.edit, event.time)
                if event.task_id is not None:
                    span.set_attribute(TASK_ID, event.task_id)
                span.add_event("accepted", timestamp=_ns(event.time))
                if event.create_seconds is not None:
                    self._create.record(event.create_seconds)
                self._fly(event.edit)
            case EditAnswerLost():
                if (span := self._spans.get(event.edit)) is not None:
                    span.add_event("createTask answer lost", timestamp=_ns(event.time))
                self._fly(event.edit)
            case EditEnded():
                self._end(event)
            case RateLimitHit():
                self._rate_limited.add(1, {"seedream.endpoint": event.endpoint})
            case ImagesDownloaded():
                self._download(event)

    def _start(self, edit: int, at: float, request: TaskRequest | None = None) -> Span:
        attributes = {"gen_ai.operation.name": "image_edit"}
        if request is not None:  # (a resumed task's request may be unknown)
            attributes["gen_ai.request.model"] = request.model
        span = self._tracer.start_span(
            "seedream.edit",
            kind=self._trace.SpanKind.CLIENT,
            start_time=_ns(at),
            attributes=attributes,
        )
        self._spans[edit] = span
        return span

    def _unqueue(self, edit: int) -> None:
        if edit in self._queued_edits:
            self._queued_edits.discard(edit)
            self._queued.add(-1)

    def _fly(self, edit: int) -> None:
        if edit not in self._flying_edits:
            self._flying_edits.add(edit)
            self._in_flight.add(1)

    def _end(self, event: EditEnded) -> None:
        self._unqueue(event.edit)
        if event.edit in self._flying_edits:
            self._flying_edits.discard(event.edit)
            self._in_flight.add(-1)
        attributes: dict[str, Any] = {OUTCOME: event.outcome}
        if event.via is not None:
            attributes[RESOLVED_BY] = event.via
        if event.error is not None:
            attributes["error.type"] = type(event.error).__qualname__
        self._ended.add(1, attributes)
        if event.via is not None and event.wake_seconds is not None:
            self._wake.record(event.wake_seconds, {RESOLVED_BY: event.via})
        if event.credits:
            self._credits.add(event.credits)
        span = self._spans.pop(event.edit, None)
        if span is None:
            return
        if event.task_id is not None:
            span.set_attribute(TASK_ID, event.task_id)
        span.set_attributes(attributes)
        if event.error is not None:
            # opentelemetry-api 1.20 (the floor) types this `Exception`; newer ones take any.
            span.record_exception(cast(Exception, event.error))
            span.set_status(self._trace.StatusCode.ERROR, type(event.error).__qualname__)
        span.end(end_time=_ns(event.time))

    def _download(self, event: ImagesDownloaded) -> None:
        span = self._tracer.start_span(
            "seedream.download",
            kind=self._trace.SpanKind.CLIENT,
            start_time=_ns(event.time - event.seconds),
            attributes={TASK_ID: event.task_id, "seedream.images": len(event.paths)},
        )
        attributes: dict[str, Any] = {}
        if event.error is not None:
            attributes["error.type"] = type(event.error).__qualname__
            span.set_attribute("error.type", type(event.error).__qualname__)
            span.set_status(self._trace.StatusCode.ERROR, str(event.error))
        self._downloads.record(event.seconds, attributes)
        span.end(end_time=_ns(event.time))
