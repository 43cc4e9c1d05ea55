"""Frozen values: what a caller asks for (``EditRequest``) and what the service reports."""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TypeVar

import attrs
from yarl import URL

from ._errors import InvalidRequest

MODEL = "seedream/4.5-edit"
_E = TypeVar("_E", bound=enum.Enum)
MAX_PROMPT_CHARS = 3000
MAX_IMAGES = 14


class AspectRatio(enum.StrEnum):
    """Width to height of the edited image."""

    SQUARE = "1:1"
    LANDSCAPE_4_3 = "4:3"
    PORTRAIT_3_4 = "3:4"
    LANDSCAPE_16_9 = "16:9"
    PORTRAIT_9_16 = "9:16"
    PORTRAIT_2_3 = "2:3"
    LANDSCAPE_3_2 = "3:2"
    ULTRAWIDE_21_9 = "21:9"


class Quality(enum.StrEnum):
    """``basic`` gives 2K output, ``high`` 4K."""

    BASIC = "basic"
    HIGH = "high"


class TaskState(enum.StrEnum):
    """A task's state; ``UNKNOWN`` stands for any value the SDK does not know (pending)."""

    WAITING = "waiting"
    QUEUING = "queuing"
    GENERATING = "generating"
    SUCCESS = "success"
    FAIL = "fail"
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        """True for ``success`` and ``fail``."""
        return self in (TaskState.SUCCESS, TaskState.FAIL)

    @classmethod
    def parse(cls, value: str) -> TaskState:
        """Return the state named ``value``, or ``UNKNOWN``."""
        try:
            return cls(value)
        except ValueError:
            return cls.UNKNOWN


def _member(cls: type[_E], field: str, value: object) -> _E:
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise InvalidRequest(field, f"{value!r} is not one of {allowed}") from None


def _aspect_ratio(value: AspectRatio | str) -> AspectRatio:
    return _member(AspectRatio, "aspect_ratio", value)


def _quality(value: Quality | str) -> Quality:
    return _member(Quality, "quality", value)


def _image_urls(value: Iterable[str | URL]) -> tuple[URL, ...]:
    if isinstance(value, str | URL):
        raise InvalidRequest("image_urls", "must be a list of URLs, not a single string")
    if isinstance(value, Mapping | bytes) or not isinstance(value, Iterable):
        raise InvalidRequest("image_urls", f"must be a list of URLs, got {type(value).__name__}")
    urls = tuple(_one_url(v) for v in value)
    if not 1 <= len(urls) <= MAX_IMAGES:
        raise InvalidRequest("image_urls", f"needs 1 to {MAX_IMAGES} URLs, got {len(urls)}")
    return urls


def _one_url(value: str | URL) -> URL:
    if not isinstance(value, str | URL):
        raise InvalidRequest("image_urls", f"{value!r} is not a URL string")
    raw = str(value)
    # isprintable() is False for newlines, tabs, NUL and every non-ASCII space; yarl would
    # drop some of them silently. Checked in C: this runs for every image of every request.
    if not raw.isprintable() or " " in raw:
        # yarl would silently drop a newline or tab: refuse rather than send another URL.
        raise InvalidRequest("image_urls", f"{raw!r} contains white space or control characters")
    try:
        url = value if isinstance(value, URL) else URL(value)
    except (TypeError, ValueError) as e:
        raise InvalidRequest("image_urls", f"{value!r} is not a URL: {e}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidRequest("image_urls", f"{str(value)!r} is not an absolute http(s) URL")
    return url


def _check_prompt(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str):
        raise InvalidRequest("prompt", f"must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidRequest("prompt", "must not be empty")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest("prompt", f"has {len(value)} characters, at most 3000 allowed")


def _check_nsfw(_: object, __: attrs.Attribute[bool | None], value: bool | None) -> None:
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest("nsfw_checker", f"must be a bool or None, got {value!r}")


@attrs.frozen(kw_only=True)
class EditRequest:
    """One edit: validated at construction, so a bad one never reaches the network."""

    prompt: str = attrs.field(validator=_check_prompt)
    image_urls: tuple[URL, ...] = attrs.field(converter=_image_urls)
    aspect_ratio: AspectRatio = attrs.field(default=AspectRatio.SQUARE, converter=_aspect_ratio)
    quality: Quality = attrs.field(default=Quality.BASIC, converter=_quality)
    nsfw_checker: bool | None = attrs.field(default=None, validator=_check_nsfw)

    def fingerprint(self) -> str:
        """Return a stable digest of everything the service is asked to do."""
        canonical = json.dumps(
            [
                self.prompt,
                [str(u) for u in self.image_urls],
                self.aspect_ratio.value,
                self.quality.value,
                self.nsfw_checker,
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


def request_from(
    request: EditRequest | None,
    *,
    prompt: str | None,
    image_urls: Iterable[str | URL] | None,
    aspect_ratio: AspectRatio | str,
    quality: Quality | str,
    nsfw_checker: bool | None,
) -> EditRequest:
    """The request ``edit()`` means: one given whole, or one built from its fields."""
    if request is None:
        if prompt is None or image_urls is None:
            raise InvalidRequest("request", "pass an EditRequest or prompt and image_urls")
        return EditRequest(
            prompt=prompt,
            image_urls=image_urls,
            aspect_ratio=aspect_ratio,
            quality=quality,
            nsfw_checker=nsfw_checker,
        )
    if prompt is not None or image_urls is not None:
        raise InvalidRequest("request", "pass an EditRequest or its fields, not both")
    return request


@attrs.frozen(kw_only=True)
class TaskRecord:
    """What the service knows about a task (recordInfo data, or a callback's data)."""

    task_id: str
    state: TaskState
    model: str | None = None
    raw_state: str | None = None
    result_urls: tuple[URL, ...] = ()
    fail_code: str | None = None
    fail_msg: str | None = None
    create_time: datetime | None = None
    complete_time: datetime | None = None
    update_time: datetime | None = None
    credits_consumed: float | None = None

    @property
    def is_final(self) -> bool:
        """True once the task succeeded or failed."""
        return self.state.is_final


@attrs.frozen(kw_only=True)
class EditResult:
    """A finished edit: its result URLs, the final record and (when known) the request."""

    task_id: str
    urls: tuple[URL, ...]
    record: TaskRecord
    request: EditRequest | None = None
