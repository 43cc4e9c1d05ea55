"""
The wire format: the one cattrs converter and every quirk of the service.

Nothing else in the package touches the service's raw dicts. Quirks absorbed here:
``msg`` or ``message``; ``resultJson`` as a JSON string, ``""``, null or an object;
``failCode`` as a string, an int, ``""`` or null; millisecond timestamps, some missing;
``creditsConsumed`` or ``consumeCredits``; unknown states and extra fields; the callback's
task id in ``data.taskId``, ``data.task_id`` or a top-level ``taskId``; errors that arrive as
HTTP 200 with a body code, as a real HTTP status, or as an HTML page from a proxy.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import cattrs
from cattrs.gen import make_dict_unstructure_fn, override
from yarl import URL

from ._catalog import MODELS
from ._errors import InvalidRequest, ServerError, error_for_code
from ._models import (
    EDIT_FIELDS,
    MODEL,
    NO_EXTRA,
    EditRequest,
    TaskRecord,
    TaskRequest,
    TaskState,
    edit_input,
    parse_url,
    url_text,
)

# Detailed validation builds error trees we never show (any failure becomes MalformedPayload)
# and costs a third of structuring time on the callback path.
converter = cattrs.Converter(detailed_validation=False)


def _url(value: str, _: object) -> URL:
    return parse_url(value)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _millis(value: float | str, _: object) -> datetime:
    # Exact for integer milliseconds (``fromtimestamp(ms / 1000)`` rounds through a float of
    # seconds), and a quarter quicker.
    return _EPOCH + timedelta(0, 0, 0, float(value))


def _exactly(hook_type: object) -> Callable[[object], bool]:
    return lambda t: t == hook_type


def _to_millis(value: datetime) -> int:
    return round(value.timestamp() * 1000)


# Direct hooks for a record's ``X | None`` fields (a journaled result's record, the
# simulator's every answer): cattrs' generic union dispatch was two thirds of ``record_to_wire``.
def _to_millis_or_none(value: datetime | None) -> int | None:
    return None if value is None else _to_millis(value)


def _as_is(value: object) -> object:
    return value


def _url_strings(values: tuple[URL, ...]) -> list[str]:
    return [url_text(u) for u in values]


converter.register_structure_hook(URL, _url)
converter.register_unstructure_hook(URL, url_text)
converter.register_structure_hook(TaskState, lambda v, _: TaskState.parse(v))
converter.register_structure_hook(datetime, _millis)
converter.register_unstructure_hook(datetime, _to_millis)
_WRITERS: tuple[tuple[Any, Callable[[Any], Any]], ...] = (
    (tuple[URL, ...], _url_strings),
    (datetime | None, _to_millis_or_none),
    (str | None, _as_is),
    (float | None, _as_is),
)
for _type, _write in _WRITERS:
    converter.register_unstructure_hook_func(_exactly(_type), _write)

#: A record's fields as the service names them.
_RECORD_KEYS = {
    "task_id": "taskId",
    "raw_state": "rawState",
    "result_urls": "resultUrls",
    "fail_code": "failCode",
    "fail_msg": "failMsg",
    "create_time": "createTime",
    "complete_time": "completeTime",
    "update_time": "updateTime",
    "credits_consumed": "creditsConsumed",
}
_RENAMES: dict[str, Any] = {k: override(rename=v) for k, v in _RECORD_KEYS.items()}
_RENAMES["raw"] = override(omit=True)  # what the service sent is not what we write
converter.register_unstructure_hook(
    TaskRecord, make_dict_unstructure_fn(TaskRecord, converter, **_RENAMES)
)
# Reading one is ``_structure_record`` (with the answers, below).


class MalformedPayload(ValueError):
    """A body that is not the shape the service documents (kept inside the SDK)."""


# --- requests ---------------------------------------------------------------------------


def create_task_body(request: TaskRequest, callback_url: URL | str | None) -> bytes:
    """Encode the createTask JSON body (every image a URL: upload local ones first)."""
    if type(request) is EditRequest:  # every 4.5 edit: its model a constant, no lookup
        body: dict[str, Any] = {"model": MODEL, "input": edit_input(request)}
    else:
        body = {"model": request.model, "input": request.task_input()}
    if callback_url is not None:
        body["callBackUrl"] = str(callback_url)
    return _dumps(body)


def parse_create_body(body: Any) -> tuple[TaskRequest, URL | None]:
    """Decode a createTask body (the simulator's side); raise ``InvalidRequest``."""
    if not isinstance(body, dict) or not isinstance(body.get("input"), dict):
        raise MalformedPayload("body must be an object with an object 'input'")
    model, task_input = body.get("model"), body["input"]
    request: TaskRequest
    if model == MODEL:
        extra = {k: v for k, v in task_input.items() if k not in EDIT_FIELDS}
        request = EditRequest(
            prompt=task_input.get("prompt"),
            image_urls=task_input.get("image_urls") or (),
            aspect_ratio=task_input.get("aspect_ratio", "1:1"),
            quality=task_input.get("quality", "basic"),
            nsfw_checker=task_input.get("nsfw_checker"),
            extra_input=extra or NO_EXTRA,
        )
    else:
        spec = MODELS.get(model) if isinstance(model, str) else None
        if spec is None:
            raise InvalidRequest("model", f"{model!r} is not a model this service offers")
        request = spec.parse(task_input)
    callback = body.get("callBackUrl")
    return request, URL(callback) if isinstance(callback, str) and callback else None


# --- answers ----------------------------------------------------------------------------


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Read a ``Retry-After`` header (seconds or an HTTP date) as seconds, if present."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def read_envelope(
    http_status: int,
    body: bytes,
    *,
    endpoint: str,
    retry_after: float | None = None,
) -> Any:
    """
    Return the ``data`` of a successful answer; raise the matching ``ApiError`` otherwise.

    Both the HTTP status and the body code are judged: business errors come as HTTP 200
    with a body code, 429 as a real 429, and proxies answer with HTML.
    """
    envelope = _json_object(body)
    if envelope is None or not isinstance(envelope.get("code"), int):
        if http_status == 429:
            raise error_for_code(
                429, "rate limited", http_status=429, endpoint=endpoint, retry_after=retry_after
            )
        snippet = body[:120].decode("utf-8", "replace").strip()
        raise ServerError(
            f"non-JSON answer: {snippet!r}", code=None, http_status=http_status, endpoint=endpoint
        )
    code: int = envelope["code"]
    message = str(envelope.get("msg") or envelope.get("message") or "")
    if code != 200 or not 200 <= http_status < 300:
        bad = code if code != 200 else http_status
        raise error_for_code(
            bad, message, http_status=http_status, endpoint=endpoint, retry_after=retry_after
        )
    return envelope.get("data")


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


# The ``speed`` extra: orjson parses and writes the same JSON in a fraction of the time (it
# refuses NaN, integers over 64 bits, nesting over 1024 levels and lone surrogates, which no
# answer of the service has and ``EditRequest`` refuses). It writes UTF-8 where the standard
# library writes ``\u00e9``-style escapes: the same JSON to the service. The request fingerprint
# keeps the standard library, so journals never change.
try:
    import orjson
except ImportError:  # pragma: no cover (the dev extra installs it; tests run both)
    _loads: Callable[[bytes | str], Any] = json.loads
    _dumps: Callable[[Any], bytes] = _stdlib_dumps
else:
    _loads, _dumps = orjson.loads, orjson.dumps


def dump_json(value: Any) -> bytes:
    """Compact JSON (orjson with the speed extra)."""
    return _dumps(value)


def load_json(text: bytes | str) -> Any:
    """Parse JSON from the service; anything that is not sane JSON is ``MalformedPayload``."""
    try:
        return _loads(text)
    except (ValueError, RecursionError) as e:  # deep nesting is a hostile input too
        raise MalformedPayload(f"not JSON: {type(e).__name__}") from None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = load_json(body)
    except MalformedPayload:
        return None
    return value if isinstance(value, dict) else None


#: Longest task id accepted from the service (its ids are ~30 characters).
MAX_TASK_ID = 256


def check_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is a plausible id: 1-256 printable characters."""
    if not isinstance(task_id, str) or not 0 < len(task_id) <= MAX_TASK_ID:
        raise MalformedPayload("task id is not a string of 1 to 256 characters")
    if not task_id.isprintable() or task_id != task_id.strip():
        raise MalformedPayload("task id has control characters or surrounding space")
    return task_id


def parse_task_id(data: Any) -> str:
    """Read the task id from a createTask answer's data."""
    task_id = data.get("taskId") if isinstance(data, dict) else None
    if task_id is None:
        raise MalformedPayload("createTask answer without a taskId")
    return check_task_id(task_id)


def parse_upload(data: Any) -> URL:
    """Read an upload answer's URL: ``downloadUrl`` (``fileUrl`` in older answers)."""
    url = data.get("downloadUrl") or data.get("fileUrl") if isinstance(data, dict) else None
    if not isinstance(url, str):
        raise MalformedPayload("upload answer without downloadUrl or fileUrl")
    try:
        parsed = parse_url(url)
    except ValueError as e:
        raise MalformedPayload(f"upload answer URL does not parse: {e}") from e
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise MalformedPayload("upload answer URL is not an absolute http(s) URL")
    return parsed


def parse_credits(data: Any) -> float:
    """Read the credit balance (a bare number)."""
    if isinstance(data, bool) or not isinstance(data, int | float | str):
        raise MalformedPayload(f"credit answer is not a number: {data!r}")
    try:
        return float(data)
    except ValueError:
        raise MalformedPayload(f"credit answer is not a number: {data!r}") from None


def parse_record(data: Any) -> TaskRecord:
    """Read a recordInfo (or callback) ``data`` object into a ``TaskRecord``."""
    try:
        return _structure_record(data, TaskRecord)
    except MalformedPayload:
        raise
    except (ValueError, TypeError, OverflowError) as e:  # a time or a URL that does not parse
        raise MalformedPayload(f"task record does not parse: {e}") from e


def _structure_record(data: Any, _: object) -> TaskRecord:
    """
    The converter's hook for ``TaskRecord``: the service's ``data`` object, quirks and all.

    Written out rather than generated: every callback and every poll runs it, and in a busy
    client reading a record through the generated function (a dict of the renamed fields,
    then a hook call per field) cost ~12 us against ~9 now (benchmarks/NOTES.md).
    ``tests/test_wire.py`` holds it equal to the generated one over generated records.
    ``""`` and null mean absent, as the service writes them.
    """
    if not isinstance(data, dict):
        raise MalformedPayload(f"task record is not an object: {type(data).__name__}")
    get = data.get
    state = get("state")
    task_id = check_task_id(get("taskId") or get("task_id"))
    if not isinstance(state, str) or len(state) > 64:
        raise MalformedPayload("task record needs a string state")
    credits = get("creditsConsumed", get("consumeCredits"))
    return TaskRecord(
        task_id=task_id,
        state=TaskState.parse(state),
        model=_text(get("model")),
        raw_state=state,
        result_urls=tuple([parse_url(u) for u in _result_urls(get("resultJson"))]),
        fail_code=_text(get("failCode")),
        fail_msg=_text(get("failMsg")),
        create_time=_time(get("createTime")),
        complete_time=_time(get("completeTime")),
        update_time=_time(get("updateTime")),
        credits_consumed=(
            float(credits)
            if isinstance(credits, int | float) and not isinstance(credits, bool)
            else None
        ),
        raw=data,
    )


def _text(value: object) -> str | None:
    """A text field: absent when null or ``""``; a number (``failCode``) as its text."""
    if value is None or value == "":
        return None
    return value if type(value) is str else str(value)


def _time(value: Any) -> datetime | None:
    """A millisecond timestamp field: absent when null or ``""``."""
    if value is None or value == "":
        return None
    return _millis(value, datetime)


converter.register_structure_hook(TaskRecord, _structure_record)


def _result_urls(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = load_json(value)
    if not isinstance(value, dict):
        raise MalformedPayload("resultJson is not an object")
    urls = value.get("resultUrls") or []
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise MalformedPayload("resultUrls is not a list of strings")
    return urls


def parse_callback(body: bytes) -> TaskRecord:
    """Read a callback POST body; raise ``MalformedPayload`` unless it is a callback."""
    payload = _json_object(body)
    if payload is None:
        raise MalformedPayload("callback body is not a JSON object")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise MalformedPayload("callback without a data object")
    if "taskId" not in data and "task_id" not in data and "taskId" in payload:
        data = {**data, "taskId": payload["taskId"]}
    return parse_record(data)


# --- the service's side (the simulator) ------------------------------------------------


def record_to_wire(record: TaskRecord, *, old_schema: bool = False) -> dict[str, Any]:
    """Encode a record as recordInfo/callback ``data`` (``old_schema``: consumeCredits)."""
    raw: dict[str, Any] = converter.unstructure(record, TaskRecord)
    urls = raw.pop("resultUrls")
    raw["state"] = raw.pop("rawState") or record.state.value
    # Compact, as the live service writes it (API.md)
    raw["resultJson"] = dump_json({"resultUrls": urls}).decode() if urls else ""
    credits = raw.pop("creditsConsumed")
    if old_schema:
        raw["consumeCredits"] = credits
        raw["remainedCredits"] = None
    else:
        raw["creditsConsumed"] = credits
    return raw


def envelope(code: int, msg: str, data: Any = None) -> bytes:
    """Encode an answer envelope."""
    return json.dumps({"code": code, "msg": msg, "data": data}, separators=(",", ":")).encode()
