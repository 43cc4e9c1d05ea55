"""Settings, and the one place that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping

import attrs
from yarl import URL

from ._errors import InvalidRequest

DEFAULT_BASE_URL = URL("https://api.apikley.ru")
API_KEY_ENV = "APIKLEY_API_KEY"
BASE_URL_ENV = "APIKLEY_BASE_URL"
USER_AGENT = "seedream-async/0.1 (+https://pypi.org/project/seedream-async/)"


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise InvalidRequest(attribute.name, f"must be > 0, got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise InvalidRequest(attribute.name, f"must be >= 1, got {value!r}")


@attrs.frozen(kw_only=True)
class PollSchedule:
    """
    How often a pending task is polled, by its age (the vendor's guidance by default).

    ``steps`` are ``(until_age_seconds, interval_seconds)``; past the last, the last
    interval holds. ``jitter`` spreads each interval by up to that fraction.
    """

    steps: tuple[tuple[float, float], ...] = ((30.0, 2.5), (120.0, 7.5), (float("inf"), 20.0))
    jitter: float = 0.2

    def interval(self, age: float) -> float:
        """Return the base interval for a task ``age`` seconds old."""
        for until, every in self.steps:
            if age < until:
                return every
        return self.steps[-1][1]


@attrs.frozen(kw_only=True)
class Settings:
    """Every knob of a client; each has a default that fits the documented service."""

    user_agent: str = USER_AGENT
    #: Seconds for one HTTP exchange, connect included.
    request_timeout: float = attrs.field(default=30.0, validator=_positive)
    connect_timeout: float = attrs.field(default=10.0, validator=_positive)
    #: createTask: the documented account limit is 20 per 10 s, sliding.
    create_rate: int = attrs.field(default=20, validator=_at_least_one)
    create_period: float = attrs.field(default=10.0, validator=_positive)
    #: recordInfo and credit: documented 10 per second per key; stay below it.
    query_rate: int = attrs.field(default=8, validator=_at_least_one)
    query_period: float = attrs.field(default=1.0, validator=_positive)
    #: Attempts for createTask when the service provably did not take it (429, no connection).
    create_attempts: int = attrs.field(default=8, validator=_at_least_one)
    #: Attempts for idempotent reads (recordInfo, credit, downloads).
    query_attempts: int = attrs.field(default=5, validator=_at_least_one)
    backoff_initial: float = attrs.field(default=0.5, validator=_positive)
    backoff_max: float = attrs.field(default=30.0, validator=_positive)
    #: Resubmit a createTask whose answer was lost; may pay twice. Off unless you opt in.
    resubmit_unknown: bool = False
    #: Connections in the client's own pool (keep-alive matters more than their number).
    connection_limit: int = attrs.field(default=100, validator=_at_least_one)
    #: Tasks accepted and not yet final, across all coroutines of a client.
    max_in_flight: int = attrs.field(default=100, validator=_at_least_one)
    #: Seconds after submission before a task raises TaskTimeout.
    task_deadline: float = attrs.field(default=900.0, validator=_positive)
    #: Seconds a fresh task may answer 404/422 to recordInfo before that counts as an error.
    visibility_grace: float = attrs.field(default=90.0, validator=_positive)
    #: Polling schedule without callbacks.
    poll_schedule: PollSchedule = attrs.field(factory=PollSchedule)
    #: With callbacks, polling is a safety net: first poll this late, then this often.
    safety_poll_after: float = attrs.field(default=60.0, validator=_positive)
    safety_poll_every: float = attrs.field(default=60.0, validator=_positive)


def resolve_api_key(api_key: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Return the key given, else ``$APIKLEY_API_KEY``; refuse a missing or blank one."""
    key = api_key if api_key is not None else (environ or os.environ).get(API_KEY_ENV)
    if not key or not key.strip():
        raise InvalidRequest(
            "api_key", f"no API key given and ${API_KEY_ENV} is not set (or is blank)"
        )
    return key.strip()


def resolve_base_url(base_url: str | URL | None, environ: Mapping[str, str] | None = None) -> URL:
    """Return the base URL given, else ``$APIKLEY_BASE_URL``, else the documented host."""
    raw = base_url if base_url is not None else (environ or os.environ).get(BASE_URL_ENV)
    if raw is None:
        return DEFAULT_BASE_URL
    url = URL(raw) if isinstance(raw, str) else raw
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest("base_url", f"{str(raw)!r} is not an absolute http(s) URL")
    return url.with_path(url.path.rstrip("/") or "/")
