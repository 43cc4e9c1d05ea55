"""
What the SDK tells the outside world it is doing: typed events, hooks, and INFO logs.

Every edit reports where it is (queued, sent, accepted, answer lost, ended), the transport
reports 429s, the downloader each result it saved. A hook is any callable taking one
event; the OpenTelemetry integration is one such hook, and the ``seedream_async.tasks``
logger at INFO is another (the CLI's ``-v``). With no hook and that logger quiet, nothing
is built: the fast path pays one flag check per step. A failing hook is logged and never
breaks an edit. Events never carry a key, a token or a signature.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Literal, Protocol

import attrs

from ._models import TaskRecord, TaskRequest

log = logging.getLogger("seedream_async")
#: One INFO line per step of every edit: submitted, accepted, resolved, downloaded.
task_log = logging.getLogger("seedream_async.tasks")

Outcome = Literal["resolved", "failed", "expired", "dropped"]
Via = Literal["callback", "poll", "fleet"]


@attrs.frozen(kw_only=True)
class TelemetryEvent:
    """Something the SDK did; ``time`` is the wall clock (``time.time()``) when it happened."""

    time: float = attrs.field(factory=time.time)


@attrs.frozen(kw_only=True)
class EditEvent(TelemetryEvent):
    """A step of one edit. ``edit`` tells the events of one edit apart while it lives."""

    edit: int
    task_id: str | None = None


@attrs.frozen(kw_only=True)
class EditQueued(EditEvent):
    """An edit was submitted; it waits for an in-flight slot and the createTask limiter."""

    request: TaskRequest | None = None


@attrs.frozen(kw_only=True)
class EditSent(EditEvent):
    """createTask is going out for this edit (its queue wait ends)."""


@attrs.frozen(kw_only=True)
class EditAccepted(EditEvent):
    """The service answered createTask with ``task_id`` after ``create_seconds``."""

    create_seconds: float | None = None


@attrs.frozen(kw_only=True)
class EditAnswerLost(EditEvent):
    """createTask went out and its answer was lost; a callback may still tell."""


@attrs.frozen(kw_only=True)
class EditEnded(EditEvent):
    """
    The edit's outcome is decided.

    ``via`` says what told it (a callback, a poll, another process of the fleet);
    ``wake_seconds`` is how long after that the awaiting code ran; ``credits`` what the
    task cost, when the record says.
    """

    outcome: Outcome
    via: Via | None = None
    record: TaskRecord | None = None
    error: BaseException | None = None
    wake_seconds: float | None = None

    @property
    def credits(self) -> float | None:
        """Credits the task consumed, when its record says."""
        return self.record.credits_consumed if self.record is not None else None


@attrs.frozen(kw_only=True)
class RateLimitHit(TelemetryEvent):
    """The service answered 429 on ``endpoint``; that pipeline pauses ``pause`` seconds."""

    endpoint: str
    pause: float


@attrs.frozen(kw_only=True)
class ImagesDownloaded(TelemetryEvent):
    """A result's images were saved (``paths``), or not (``error``), in ``seconds``."""

    task_id: str
    paths: tuple[Path, ...] = ()
    seconds: float = 0.0
    error: BaseException | None = None


class Hook(Protocol):
    """A telemetry hook: any callable taking one ``TelemetryEvent`` (runs inline: be quick)."""

    def __call__(self, event: TelemetryEvent, /) -> None:
        """Record ``event``."""


class Telemetry:
    """Hands events to the hooks and the task logger; cheap when nobody listens."""

    def __init__(self, hooks: Iterable[Hook] = ()) -> None:
        self.hooks: tuple[Hook, ...] = tuple(hooks)
        for hook in self.hooks:
            if not callable(hook):
                raise TypeError(f"a hook must be callable, not {type(hook).__name__}")

    @property
    def active(self) -> bool:
        """True when an event would reach someone (build it only then)."""
        return bool(self.hooks) or task_log.isEnabledFor(logging.INFO)

    def emit(self, event: TelemetryEvent) -> None:
        """Give ``event`` to every hook; a hook's failure is logged, never raised."""
        for hook in self.hooks:
            try:
                hook(event)
            except Exception:
                log.exception("telemetry hook %r failed on %s", hook, type(event).__name__)
        if task_log.isEnabledFor(logging.INFO):
            task_log.info("%s", describe(event))


def describe(event: TelemetryEvent) -> str:
    """One log line for an event: what happened, to which task; never a secret."""
    name = getattr(event, "task_id", None) or f"edit #{getattr(event, 'edit', '?')}"
    match event:
        case EditQueued():
            return f"{name}: submitted"
        case EditSent():
            return f"{name}: createTask sent"
        case EditAccepted(create_seconds=seconds):
            took = f" in {seconds:.3f} s" if seconds is not None else ""
            return f"{name}: accepted{took}"
        case EditAnswerLost():
            return f"{name}: createTask answer lost; waiting for a callback to tell"
        case EditEnded(outcome="resolved", via=via):
            cost = f", {event.credits:g} credits" if event.credits is not None else ""
            return f"{name}: resolved by {via or 'the service'}{cost}"
        case EditEnded(outcome=outcome, error=error):
            why = f": {type(error).__name__}: {error}" if error is not None else ""
            return f"{name}: {outcome}{why}"
        case RateLimitHit(endpoint=endpoint, pause=pause):
            return f"{endpoint}: rate limited (429); pausing {pause:.2f} s"
        case ImagesDownloaded(task_id=task_id, paths=paths, error=None):
            return f"{task_id}: downloaded {len(paths)} image(s)"
        case ImagesDownloaded(task_id=task_id, error=error):
            return f"{task_id}: download failed: {error}"
    return type(event).__name__
