"""Frozen values: what a caller asks for (``EditRequest``) and what the service reports."""

from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import re
import stat
import types
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, cast, runtime_checkable

import attrs
from yarl import URL
from yarl import _url as _yarl_url

from ._errors import InvalidRequest

#: yarl's own constructor from parts (1.13+): ``URL.build`` without its argument checks and
#: its 128-entry LRU cache, which every new URL misses (a result URL is always new).
#: Looked up by name, not imported: older yarl (the floor) has no such function and no stub for it.
_url_from_parts = cast(
    "Callable[[str, str, str, str, str], URL] | None",
    getattr(_yarl_url, "from_parts_uncached", None),
)

MODEL = "seedream/4.5-edit"
_E = TypeVar("_E", bound=enum.Enum)
MAX_PROMPT_CHARS = 3000
MAX_IMAGES = 14
#: The seed's limit for one input image, in bytes.
MAX_IMAGE_BYTES = 10 * 1024 * 1024
_MAGIC: tuple[tuple[str, str, bytes, int], ...] = (
    ("jpeg", ".jpg", b"\xff\xd8\xff", 0),
    ("png", ".png", b"\x89PNG\r\n\x1a\n", 0),
    ("webp", ".webp", b"WEBP", 8),  # RIFF....WEBP
)


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
            return _STATES.get(value, cls.UNKNOWN)  # (every record: a dict, not ``cls(value)``)
        except TypeError:  # not hashable, so not a state
            return cls.UNKNOWN


_STATES = {state.value: state for state in TaskState}


def _member(cls: type[_E], field: str, value: object) -> _E:
    if type(value) is cls:
        return value  # a member already (the defaults): no lookup
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(repr(m.value) for m in cls)
        raise InvalidRequest(field, f"{value!r} is not one of {allowed}") from None


def _aspect_ratio(value: AspectRatio | str) -> AspectRatio:
    return _member(AspectRatio, "aspect_ratio", value)


def _quality(value: Quality | str) -> Quality:
    return _member(Quality, "quality", value)


@attrs.frozen
class LocalImage:
    """
    An image file to upload before createTask (made from a ``pathlib.Path``).

    Checked when made, before anything is sent: a regular file of at most 10 MB whose content
    (magic bytes, not the extension) is JPEG, PNG or WebP. ``sha256`` of the content is what
    identifies it (uploads, journals), computed on first use in bounded chunks.
    """

    path: Path
    size: int
    kind: str
    _digest: list[str] = attrs.field(factory=list, eq=False, repr=False, alias="_digest")
    #: The file ``path`` led to when checked: symbolic links are followed then, never later.
    _target: Path | None = attrs.field(default=None, eq=False, repr=False, alias="_target")

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LocalImage:
        """Check ``path``; ``InvalidRequest`` names it and the rule it breaks."""
        where = Path(path)
        target = Path(os.path.realpath(where))
        try:
            info = target.stat()
        except OSError as e:
            raise InvalidRequest("image_urls", f"{where}: {e.strerror or e}") from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidRequest("image_urls", f"{where}: not a regular file")
        if info.st_size > MAX_IMAGE_BYTES:
            raise InvalidRequest(
                "image_urls", f"{where}: {info.st_size} bytes, over the 10 MB limit of an image"
            )
        try:
            fd = open_no_follow(target)
            try:
                head = os.read(fd, 16)
            finally:
                os.close(fd)
        except OSError as e:
            raise InvalidRequest("image_urls", f"{where}: {e.strerror or e}") from None
        kind = image_kind(head)
        if kind is None:
            raise InvalidRequest("image_urls", f"{where}: not a JPEG, PNG or WebP image")
        return cls(path=where.absolute(), size=info.st_size, kind=kind, _target=target)

    @property
    def suffix(self) -> str:
        """The file-name suffix of its kind (``.jpg``, ``.png``, ``.webp``)."""
        return next(suffix for kind, suffix, _, _ in _MAGIC if kind == self.kind)

    @property
    def sha256(self) -> str:
        """The SHA-256 of the file's content (read once, 256 KiB at a time)."""
        if not self._digest:
            digest = hashlib.sha256()
            buffer = bytearray(1 << 18)  # one buffer, reused: no allocation per chunk
            view = memoryview(buffer)
            try:
                with open(open_no_follow(checked_path(self)), "rb", closefd=True) as f:
                    while n := f.readinto(buffer):
                        digest.update(view[:n])
            except OSError as e:
                raise InvalidRequest("image_urls", f"{self.path}: {e.strerror or e}") from None
            pin_sha256(self, digest.hexdigest())
        return self._digest[0]


#: Read-only, never through a symbolic link, never waiting for a FIFO's writer.
_NO_FOLLOW = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
_NO_FOLLOW |= getattr(os, "O_BINARY", 0)


def open_no_follow(path: Path) -> int:
    """A descriptor of ``path`` itself; ``OSError`` (``ELOOP``) if it is a symbolic link."""
    return os.open(path, _NO_FOLLOW)


def checked_path(image: LocalImage) -> Path:
    """The file ``image`` was checked as (its symbolic links resolved at the check)."""
    return image._target or image.path


def pin_sha256(image: LocalImage, sha256: str) -> str:
    """``image``'s content hash: the first one known (hashed by the image or its upload)."""
    if not image._digest:
        image._digest.append(sha256)
    return image._digest[0]


def image_kind(head: bytes) -> str | None:
    """``jpeg``, ``png`` or ``webp`` by the first bytes of a file, else None."""
    for kind, _, magic, offset in _MAGIC:
        if head[offset : offset + len(magic)] == magic and (kind != "webp" or head[:4] == b"RIFF"):
            return kind
    return None


ImageSource = URL | LocalImage


def _image_urls(value: Iterable[str | URL | os.PathLike[str]]) -> tuple[ImageSource, ...]:
    if type(value) is list or type(value) is tuple:  # the usual case: no ABC checks
        urls = tuple(_one_url(v) if type(v) is str else _one_source(v) for v in value)
    elif isinstance(value, str | URL | os.PathLike):
        raise InvalidRequest("image_urls", "must be a list of URLs or paths, not a single one")
    elif isinstance(value, Mapping | bytes) or not isinstance(value, Iterable):
        raise InvalidRequest("image_urls", f"must be a list of URLs, got {type(value).__name__}")
    else:
        urls = tuple(_one_source(v) for v in value)
    if not 1 <= len(urls) <= MAX_IMAGES:
        raise InvalidRequest("image_urls", f"needs 1 to {MAX_IMAGES} URLs, got {len(urls)}")
    return urls


def _one_source(value: object) -> ImageSource:
    if isinstance(value, LocalImage):
        return value
    if isinstance(value, os.PathLike):
        return LocalImage.open(value)
    return _one_url(value)


#: A string yarl would keep exactly as it is: an http(s) URL with a lower-case ASCII host, an
#: optional port, and a path and query of characters yarl never re-quotes. Checked with
#: ``"/." not in`` too (yarl resolves dot segments).
_PLAIN_URL = re.compile(
    r"(https?)://([a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::([1-9][0-9]{0,4}))?)"
    r"(/[A-Za-z0-9_.~/,=+@:-]*)?(?:\?([A-Za-z0-9_.~=&-]*))?"
)
#: One string per scheme, shared by every URL (the match's group is a new string each time).
_SCHEMES = {"http": "http", "https": "https"}
#: Hosts seen lately, each one string that every URL on it shares. Bounded in number and in
#: length: callbacks are parsed before their token is checked, so anyone who can reach the
#: receiver chooses hosts too (and ``sys.intern`` would keep each forever on the builds where
#: interned strings are immortal: 3.12.0-3.12.4, free-threaded).
_HOSTS: dict[str, str] = {}
_HOSTS_MAX = 1024
_HOST_LONGEST = 259  # a DNS name's 253 characters, a colon and a port


def parse_url(raw: str) -> URL:
    """``URL(raw)``, without re-quoting a string that needs none (the usual image URL)."""
    url = _plain_url(raw)
    return URL(raw) if url is None else url


def _plain_url(raw: str) -> URL | None:
    """
    The URL of a string yarl would keep as it is, built from its parts; else None.

    The same URL as ``URL(raw)`` (equal, hashing alike, printing alike) in about two-thirds
    of the time (benchmarks/NOTES.md); ``tests/test_models.py`` proves the equality over
    generated URLs. The scheme and the host are shared strings (``_HOSTS``): a batch's
    images, like a service's results, mostly live on one host, and a parked edit keeps its
    URLs for as long as it waits.
    """
    match = _PLAIN_URL.fullmatch(raw)
    if match is None or "/." in raw:
        return None
    scheme, authority, port, path, query = match.groups()
    if port is not None and int(port) > 65535:
        return None
    host = authority
    if len(authority) <= _HOST_LONGEST:
        host = _HOSTS.setdefault(authority, authority)
        if len(_HOSTS) > _HOSTS_MAX:
            _HOSTS.clear()
    if _url_from_parts is not None:
        return _url_from_parts(_SCHEMES[scheme], host, path or "", query or "", "")
    return URL.build(
        scheme=_SCHEMES[scheme],
        authority=host,
        path=path or "",
        query_string=query or "",
        encoded=True,
    )


def url_text(url: URL) -> str:
    """
    ``str(url)``, without filling the URL's cache of parsed parts.

    yarl prints a URL through its cached properties (it checks the port against the
    scheme's default), which fills a dict on the URL: ~190 bytes kept by every image URL of
    every parked edit, once its createTask body is made. A URL with a scheme, a host and no
    port or user is printed from its parts as yarl would print it; any other goes to
    ``str``, as does every URL of a yarl whose private layout is not the one read here.
    ``tests/test_models.py`` proves the text equal to ``str(url)`` over generated URLs.
    """
    try:
        scheme, netloc, path = url._scheme, url._netloc, url._path
        query, fragment = url._query, url._fragment
    except AttributeError:  # pragma: no cover (a yarl of another layout)
        return str(url)
    if not scheme or not netloc or ":" in netloc or "@" in netloc or path[:1] not in ("", "/"):
        return str(url)
    if not path and (query or fragment):
        path = "/"
    text = f"{scheme}://{netloc}{path}"
    if query:
        text = f"{text}?{query}"
    return f"{text}#{fragment}" if fragment else text


def _one_url(value: object) -> URL:
    if type(value) is str and (plain := _plain_url(value)) is not None:
        return plain  # http(s), a host, nothing to re-quote: valid as it stands
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
    if not value.isascii():  # (a flag in CPython: free for the usual prompt)
        try:
            value.encode()
        except UnicodeEncodeError as e:
            raise InvalidRequest(
                "prompt", f"is not valid text: a lone surrogate at character {e.start}"
            ) from None


def _check_nsfw(_: object, __: attrs.Attribute[bool | None], value: bool | None) -> None:
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest("nsfw_checker", f"must be a bool or None, got {value!r}")


#: ``extra_input`` when none is given: one shared, immutable, empty mapping.
NO_EXTRA: Mapping[str, Any] = types.MappingProxyType({})
#: The fields ``EditRequest`` types (``extra_input`` may not shadow them).
EDIT_FIELDS = ("prompt", "image_urls", "aspect_ratio", "quality", "nsfw_checker")
#: The largest ``input`` the SDK sends, as compact JSON: far above any typed model's
#: (14 URLs and a 5000-character prompt are ~40 KB), low enough to stop a runaway payload.
MAX_INPUT_BYTES = 1 << 20


def json_input(field: str, value: object) -> dict[str, Any]:
    """``value`` as a dict of JSON values, or ``InvalidRequest`` naming what is not JSON."""
    if not isinstance(value, Mapping):
        raise InvalidRequest(field, f"must be a mapping of JSON values, got {type(value).__name__}")
    out = dict(value)
    for key, item in out.items():
        if not isinstance(key, str):
            raise InvalidRequest(field, f"has a key that is not a string: {key!r}")
        _check_json(f"{field}.{key}", item, 0)
    size = len(canonical_json(out))
    if size > MAX_INPUT_BYTES:
        raise InvalidRequest(field, f"is {size} bytes of JSON, at most {MAX_INPUT_BYTES}")
    return out


def _check_json(where: str, value: object, depth: int) -> None:
    if depth > 64:
        raise InvalidRequest(where, "nests deeper than 64 levels")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise InvalidRequest(where, f"{value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidRequest(where, f"{value} is not a JSON number")
        return
    if isinstance(value, list | tuple):
        for n, item in enumerate(value):
            _check_json(f"{where}[{n}]", item, depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidRequest(where, f"has a key that is not a string: {key!r}")
            _check_json(f"{where}.{key}", item, depth + 1)
        return
    raise InvalidRequest(where, f"{type(value).__name__} is not a JSON value")


def canonical_json(value: object) -> bytes:
    """Sorted, compact JSON: what fingerprints digest."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False).encode()


def _edit_extra(value: Mapping[str, Any]) -> Mapping[str, Any]:
    if value is NO_EXTRA:
        return value  # the usual case: nothing to check
    extra = json_input("extra_input", value)
    for name in EDIT_FIELDS:
        if name in extra:
            raise InvalidRequest("extra_input", f"{name!r} is a field of EditRequest: set it there")
    return extra


#: A string as ``json.dumps`` writes it (ASCII, escaped); fingerprints depend on this output.
_json_str: Callable[[str], str] = json.encoder.encode_basestring_ascii
_JSON_FLAGS = {None: "null", True: "true", False: "false"}


@attrs.frozen(kw_only=True)
class EditRequest:
    """One edit: validated at construction, so a bad one never reaches the network."""

    #: The model it asks for (Seedream 4.5 Edit).
    model: ClassVar[str] = MODEL
    prompt: str = attrs.field(validator=_check_prompt)
    #: URLs, or local images (give a ``pathlib.Path``): uploaded before createTask.
    image_urls: tuple[ImageSource, ...] = attrs.field(converter=_image_urls)
    aspect_ratio: AspectRatio = attrs.field(default=AspectRatio.SQUARE, converter=_aspect_ratio)
    quality: Quality = attrs.field(default=Quality.BASIC, converter=_quality)
    nsfw_checker: bool | None = attrs.field(default=None, validator=_check_nsfw)
    #: JSON values sent as they are inside ``input``: a field the vendor added lately.
    extra_input: Mapping[str, Any] = attrs.field(
        default=NO_EXTRA, converter=_edit_extra, hash=False, repr=False
    )
    #: Derived once at construction (asked on every submission): the images that are files.
    _local: tuple[LocalImage, ...] = attrs.field(
        init=False,
        eq=False,
        repr=False,
        default=attrs.Factory(
            lambda self: tuple(u for u in self.image_urls if isinstance(u, LocalImage)),
            takes_self=True,
        ),
    )

    @property
    def local_images(self) -> tuple[LocalImage, ...]:
        """The images that are files here (uploaded before createTask)."""
        return self._local

    def task_input(self) -> dict[str, Any]:
        """createTask's ``input`` (every image a URL: upload local ones first)."""
        return edit_input(self)

    def fingerprint(self) -> str:
        """Return a stable digest of everything the service is asked to do.

        A local image counts by its content hash: moving a folder changes nothing.
        """
        # json.dumps([prompt, [urls], aspect, quality, nsfw], separators=(",", ":")), the
        # digest's input since the first journal, built from the C string escaper: the
        # one-shot encoder behind dumps is half of a fingerprint's cost.
        urls = ",".join(
            [
                _json_str(f"sha256:{u.sha256}" if isinstance(u, LocalImage) else url_text(u))
                for u in self.image_urls
            ]
        )
        canonical = (
            f"[{_json_str(self.prompt)},[{urls}],{_json_str(self.aspect_ratio.value)},"
            f"{_json_str(self.quality.value)},{_JSON_FLAGS[self.nsfw_checker]}]"
        )
        if self.extra_input:  # (never in a journal older than extra_input: the same digest)
            canonical = f"{canonical[:-1]},{canonical_json(self.extra_input).decode()}]"
        return hashlib.sha256(canonical.encode()).hexdigest()


def edit_input(request: EditRequest) -> dict[str, Any]:
    """A 4.5 edit's createTask ``input`` (every image a URL: upload local ones first)."""
    urls = [url_text(u) for u in request.image_urls if isinstance(u, URL)]
    if len(urls) != len(request.image_urls):
        raise InvalidRequest("image_urls", "local images must be uploaded before createTask")
    task_input: dict[str, Any] = {
        "prompt": request.prompt,
        "image_urls": urls,
        "aspect_ratio": request.aspect_ratio.value,
        "quality": request.quality.value,
    }
    if request.nsfw_checker is not None:
        task_input["nsfw_checker"] = request.nsfw_checker
    if request.extra_input:
        task_input.update(request.extra_input)
    return task_input


def request_from(
    request: TaskRequest | None,
    *,
    prompt: str | None,
    image_urls: Iterable[str | URL | os.PathLike[str]] | None,
    aspect_ratio: AspectRatio | str,
    quality: Quality | str,
    nsfw_checker: bool | None,
) -> TaskRequest:
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


@runtime_checkable
class TaskRequest(Protocol):
    """What the core knows of any request: every typed request and ``JobRequest`` are one."""

    @property
    def model(self) -> str:
        """The model id sent as createTask's ``model``."""
        ...

    @property
    def local_images(self) -> tuple[LocalImage, ...]:
        """The images that are files here (uploaded before createTask)."""
        ...

    def task_input(self) -> dict[str, Any]:
        """createTask's ``input`` (every image a URL: upload local ones first)."""
        ...

    def fingerprint(self) -> str:
        """A stable digest of everything the service is asked to do (journals compare it)."""
        ...


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
    #: The service's ``data`` object as it came (its fields the SDK does not know, too);
    #: None for a record made here.
    raw: Mapping[str, Any] | None = attrs.field(default=None, eq=False, hash=False, repr=False)

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
    #: The request it answers: an ``EditRequest``, or any other model's (``TaskRequest``).
    request: TaskRequest | None = None
