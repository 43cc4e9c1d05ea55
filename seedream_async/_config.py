"""Settings, and the one place that reads the environment."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping

import attrs
from yarl import URL

from ._errors import InvalidRequest

DEFAULT_BASE_URL = URL("https://api.apikley.ru")
API_KEY_ENV = "APIKLEY_API_KEY"
BASE_URL_ENV = "APIKLEY_BASE_URL"
REDIS_URL_ENV = "SEEDREAM_REDIS_URL"
#: Set to 1 to allow downloads from private addresses (a local simulator serves them).
PRIVATE_DOWNLOADS_ENV = "SEEDREAM_ALLOW_PRIVATE_DOWNLOADS"


def _private_downloads_from_env() -> bool:
    return os.environ.get(PRIVATE_DOWNLOADS_ENV, "").strip().lower() in ("1", "true", "yes")


USER_AGENT = "seedream-async/0.1 (+https://pypi.org/project/seedream-async/)"
_Steps = tuple[tuple[float, float], ...]


def _positive(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    # NaN compares false with everything, so "not > 0" (not "<= 0") refuses it too.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise InvalidRequest(attribute.name, f"must be a number > 0, got {value!r}")
    if not math.isfinite(value):
        raise InvalidRequest(attribute.name, f"must be finite, got {value!r}")


def _fraction(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise InvalidRequest(attribute.name, f"must be in [0, 1), got {value!r}")


def _at_least_one(_: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(attribute.name, f"must be an integer >= 1, got {value!r}")


def _check_steps(_: object, __: attrs.Attribute[_Steps], steps: _Steps) -> None:
    if not steps:
        raise InvalidRequest("poll_schedule", "needs at least one step")
    for until, every in steps:
        if math.isnan(until) or not until > 0:
            raise InvalidRequest("poll_schedule", f"step ages must be > 0, got {until!r}")
        if not (math.isfinite(every) and every > 0):
            raise InvalidRequest(
                "poll_schedule", f"intervals must be finite and > 0, got {every!r}"
            )


def _check_user_agent(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip() or any(c in value for c in "\r\n\0"):
        raise InvalidRequest("user_agent", "must be a non-empty single line")


@attrs.frozen(kw_only=True)
class PollSchedule:
    """
    How often a pending task is polled, by its age (the vendor's guidance by default).

    ``steps`` are ``(until_age_seconds, interval_seconds)``; past the last, the last
    interval holds. ``jitter`` spreads each interval by up to that fraction.
    """

    steps: tuple[tuple[float, float], ...] = attrs.field(
        default=((30.0, 2.5), (120.0, 7.5), (float("inf"), 20.0)), validator=_check_steps
    )
    jitter: float = attrs.field(default=0.2, validator=_fraction)

    def interval(self, age: float) -> float:
        """Return the base interval for a task ``age`` seconds old."""
        for until, every in self.steps:
            if age < until:
                return every
        return self.steps[-1][1]


@attrs.frozen(kw_only=True)
class Settings:
    """Every knob of a client; each has a default that fits the documented service."""

    user_agent: str = attrs.field(default=USER_AGENT, validator=_check_user_agent)
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
    #: Of those (and of a read's), how many may find no one listening (refused, no such
    #: host) before ``ServiceUnreachable``: a wrong base URL fails in about a second.
    connect_attempts: int = attrs.field(default=3, validator=_at_least_one)
    #: Attempts for idempotent reads (recordInfo, credit, downloads).
    query_attempts: int = attrs.field(default=5, validator=_at_least_one)
    backoff_initial: float = attrs.field(default=0.5, validator=_positive)
    backoff_max: float = attrs.field(default=30.0, validator=_positive)
    #: Resubmit a createTask whose answer was lost; may pay twice. Off unless you opt in.
    resubmit_unknown: bool = False
    #: Connections in the client's own pool (keep-alive matters more than their number); no
    #: more createTasks go out at once, the rest wait their turn.
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
    #: Largest API answer read, after decompression (recordInfo answers are a few KiB).
    max_answer_bytes: int = attrs.field(default=1024 * 1024, validator=_at_least_one)
    #: Download result images from loopback, private, link-local or reserved addresses.
    #: Off (unless ``$SEEDREAM_ALLOW_PRIVATE_DOWNLOADS=1``, for a simulator on this host):
    #: a callback could otherwise point downloads at your own network (SSRF).
    allow_private_downloads: bool = attrs.field(factory=_private_downloads_from_env)
    #: Seconds one result image may take to download in all (a trickling server is cut off).
    download_timeout: float = attrs.field(default=300.0, validator=_positive)
    #: Where uploads go: ``base_url`` unless set (kie's own upload host, for one).
    upload_base_url: str | None = None
    #: The upload API's path under it (Apikley: ``file-upload/api``; kie: ``api``).
    upload_path: str = "file-upload/api"
    #: The folder uploads are kept in on the service (``uploadPath``).
    upload_folder: str = "seedream-async"
    #: Uploads at once, and per ``upload_period`` seconds: the upload API's limits are not
    #: documented, so these are conservative.
    upload_concurrency: int = attrs.field(default=4, validator=_at_least_one)
    upload_rate: int = attrs.field(default=10, validator=_at_least_one)
    upload_period: float = attrs.field(default=1.0, validator=_positive)
    #: An uploaded file is reused this long (sources say files live 24 h or 3 days).
    upload_reuse_for: float = attrs.field(default=20 * 3600.0, validator=_positive)
    #: Seconds submissions wait out a maintenance (455) or an outage before they fail with
    #: ``ServiceUnavailable`` (still unsent); the service is probed with the free credit call.
    outage_patience: float = attrs.field(default=120.0, validator=_positive)
    #: Answers in a row that are 5xx, timeouts or network failures: the service is down.
    outage_after: int = attrs.field(default=5, validator=_at_least_one)
    #: While credits (402) or a sub-key's cap (433) stop sending, the free credit call
    #: re-checks the account at most this often (a top-up is noticed).
    credit_recheck: float = attrs.field(default=30.0, validator=_positive)


def resolve_api_key(api_key: str | None, environ: Mapping[str, str] | None = None) -> str:
    """Return the key given, else ``$APIKLEY_API_KEY``; refuse a missing or blank one."""
    key = api_key if api_key is not None else (environ or os.environ).get(API_KEY_ENV)
    if not isinstance(key, str) or not key.strip():
        raise InvalidRequest(
            "api_key", f"no API key given and ${API_KEY_ENV} is not set (or is blank)"
        )
    key = key.strip()
    if not key.isprintable() or not key.isascii():
        # It goes into a header: a newline would fail at the first request, or split it.
        raise InvalidRequest("api_key", "contains control or non-ASCII characters")
    return key


def resolve_redis_url(url: str | None, environ: Mapping[str, str] | None = None) -> str | None:
    """Return the Redis URL given, else ``$SEEDREAM_REDIS_URL``, else None (no fleet)."""
    value = url if url is not None else (environ or os.environ).get(REDIS_URL_ENV)
    return value.strip() if value and value.strip() else None


def resolve_base_url(base_url: str | URL | None, environ: Mapping[str, str] | None = None) -> URL:
    """Return the base URL given, else ``$APIKLEY_BASE_URL``, else the documented host."""
    raw = base_url if base_url is not None else (environ or os.environ).get(BASE_URL_ENV)
    if raw is None:
        return DEFAULT_BASE_URL
    if isinstance(raw, str) and any(c.isspace() or not c.isprintable() for c in raw.strip()):
        raise InvalidRequest("base_url", f"{raw!r} contains white space or control characters")
    try:
        url = URL(raw.strip()) if isinstance(raw, str) else raw
    except (TypeError, ValueError) as e:
        raise InvalidRequest("base_url", f"{raw!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest("base_url", f"{str(raw)!r} is not an absolute http(s) URL")
    if url.scheme == "http" and url.host not in _LOCAL_HOSTS:
        warnings.warn(
            f"base_url {url.origin()} is plain http: the API key travels in clear text",
            InsecureBaseUrl,
            stacklevel=3,
        )
    return url.with_path(url.path.rstrip("/") or "/")


#: Hosts where plain http stays on this machine (the simulator, a local proxy).
_LOCAL_HOSTS = frozenset(("127.0.0.1", "localhost", "::1"))


class InsecureBaseUrl(UserWarning):
    """A plain ``http://`` base URL to a non-local host: the key would travel in clear."""


#: Settings for tests against the simulator: fast polls and retries, short safety polls.
TEST_SETTINGS = Settings(
    poll_schedule=PollSchedule(steps=((float("inf"), 0.05),), jitter=0.1),
    backoff_initial=0.01,
    backoff_max=0.05,
    safety_poll_after=1.0,
    safety_poll_every=0.5,
    visibility_grace=5.0,
    request_timeout=5.0,
    query_rate=200,
    create_rate=1000,
    create_period=1.0,
    task_deadline=60.0,
    allow_private_downloads=True,  # the simulator serves result images on loopback
)
