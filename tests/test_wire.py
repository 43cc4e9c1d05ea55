"""Every quirk of the wire format listed in API.md, in one converter."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import cattrs
import orjson
import pytest
from cattrs.gen import make_dict_structure_fn, override
from hypothesis import example, given, settings
from hypothesis import strategies as st
from yarl import URL

from seedream_async import (
    ApiError,
    AuthenticationError,
    EditRequest,
    FeatureDisabled,
    InsufficientCredits,
    NotFound,
    RateLimited,
    RequestRejected,
    ServerError,
    ServiceUnavailable,
    TaskRecord,
    TaskState,
    UsageLimitExceeded,
    _wire,
)
from seedream_async._models import parse_url
from seedream_async._wire import (
    MalformedPayload,
    create_task_body,
    parse_callback,
    parse_create_body,
    parse_credits,
    parse_record,
    parse_retry_after,
    parse_task_id,
    read_envelope,
    record_to_wire,
)
from tests.conftest import request

LIVE_RECORD = {
    "taskId": "task_1",
    "model": "seedream/4.5-edit",
    "state": "success",
    "param": json.dumps(json.dumps({"model": "seedream/4.5-edit"})),
    "resultJson": '{"resultUrls":["https://tempfile.aiquickdraw.com/a.jpeg"]}',
    "failCode": None,
    "failMsg": None,
    "costTime": 274,
    "completeTime": 1774509366025,
    "createTime": 1774509092129,
    "updateTime": 1774509366025,
}


def test_live_record() -> None:
    rec = parse_record(LIVE_RECORD)
    assert rec.task_id == "task_1"
    assert rec.state is TaskState.SUCCESS
    assert rec.result_urls == (URL("https://tempfile.aiquickdraw.com/a.jpeg"),)
    assert rec.complete_time == datetime(2026, 3, 26, 7, 16, 6, 25000, tzinfo=UTC)
    assert rec.fail_code is None
    assert rec.credits_consumed is None


@pytest.mark.parametrize("result_json", ["", None, {"resultUrls": []}, '{"resultUrls":[]}'])
def test_empty_results(result_json: object) -> None:
    rec = parse_record({**LIVE_RECORD, "state": "generating", "resultJson": result_json})
    assert rec.result_urls == ()
    assert not rec.is_final


def test_result_json_as_object() -> None:
    rec = parse_record({**LIVE_RECORD, "resultJson": {"resultUrls": ["https://x/y.png"]}})
    assert rec.result_urls == (URL("https://x/y.png"),)


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [(500, "500"), ("GENERATION_FAILED", "GENERATION_FAILED"), ("", None), (None, None)],
)
def test_fail_code_forms(raw: object, parsed: str | None) -> None:
    rec = parse_record({**LIVE_RECORD, "state": "fail", "failCode": raw, "failMsg": ""})
    assert rec.fail_code == parsed
    assert rec.fail_msg is None


def test_missing_times_and_unknown_fields() -> None:
    data = {"taskId": "t", "state": "queuing", "brandNew": {"x": 1}}
    rec = parse_record(data)
    assert rec.update_time is None
    assert rec.create_time is None
    assert rec.state is TaskState.QUEUING


def test_unknown_state_keeps_raw() -> None:
    rec = parse_record({"taskId": "t", "state": "teleporting"})
    assert rec.state is TaskState.UNKNOWN
    assert rec.raw_state == "teleporting"


@pytest.mark.parametrize("key", ["creditsConsumed", "consumeCredits"])
def test_credit_keys(key: str) -> None:
    assert parse_record({"taskId": "t", "state": "success", key: 1.23}).credits_consumed == 1.23


@pytest.mark.parametrize(
    "data",
    [
        [],
        {"state": "success"},
        {"taskId": "t"},
        {"taskId": "t", "state": "success", "resultJson": "{not json"},
        {"taskId": "t", "state": "success", "resultJson": '{"resultUrls": "x"}'},
        {"taskId": "t", "state": "success", "createTime": "yesterday"},
    ],
)
def test_malformed_records(data: Any) -> None:
    with pytest.raises(MalformedPayload):
        parse_record(data)


def test_record_round_trips_both_schemas() -> None:
    rec = parse_record({**LIVE_RECORD, "creditsConsumed": 2.5})
    assert parse_record(record_to_wire(rec)) == rec
    old = record_to_wire(rec, old_schema=True)
    assert "creditsConsumed" not in old
    assert parse_record(old) == rec


_text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=20)  # no lone surrogates
_millis = st.integers(0, 4_102_444_800_000).map(lambda ms: datetime.fromtimestamp(ms / 1000, UTC))
_known = st.sampled_from([s for s in TaskState if s is not TaskState.UNKNOWN])


@st.composite
def _records(draw: st.DrawFn) -> TaskRecord:
    if draw(st.booleans()):
        state: TaskState = draw(_known)
        raw_state = state.value
    else:
        state = TaskState.UNKNOWN
        raw_state = draw(_text.filter(lambda s: TaskState.parse(s) is TaskState.UNKNOWN))
    hosts = st.sampled_from(["https://tempfile.example/", "http://127.0.0.1:8080/r/"])
    urls = st.lists(st.tuples(hosts, st.integers(0, 10**9)), max_size=3)
    return TaskRecord(
        task_id=draw(_text.filter(lambda s: s.isprintable() and s == s.strip())),
        state=state,
        raw_state=raw_state,
        model=draw(st.none() | _text),
        result_urls=tuple(URL(f"{h}{n}.png") for h, n in draw(urls)),
        fail_code=draw(st.none() | _text),
        fail_msg=draw(st.none() | _text),
        create_time=draw(st.none() | _millis),
        complete_time=draw(st.none() | _millis),
        update_time=draw(st.none() | _millis),
        credits_consumed=draw(st.none() | st.floats(allow_nan=False, allow_infinity=False)),
    )


def test_millisecond_times_read_exactly_to_the_last_year() -> None:
    rec = parse_record({"taskId": "t", "state": "success", "createTime": 253_402_300_799_999})
    assert rec.create_time == datetime(9999, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)
    assert record_to_wire(rec)["createTime"] == 253_402_300_799_999


def _generated_reader() -> Callable[[Any], TaskRecord]:
    """The record reader this one replaced (cattrs' generated function over the renamed
    fields, a hook per field type), kept as the oracle of ``test_the_reader_matches...``."""
    conv = cattrs.Converter(detailed_validation=False)

    def exactly(hook_type: object) -> Callable[[object], bool]:
        return lambda t: t == hook_type

    hooks: dict[object, Callable[[Any, Any], Any]] = {
        tuple[URL, ...]: lambda v, _: tuple(map(parse_url, v)),
        datetime | None: lambda v, t: None if v is None else _wire._millis(v, t),
        str | None: lambda v, _: v if type(v) is str else None if v is None else str(v),
        float | None: lambda v, _: None if v is None else float(v),
    }
    for hook_type, hook in hooks.items():
        conv.register_structure_hook_func(exactly(hook_type), hook)
    conv.register_structure_hook(TaskState, lambda v, _: TaskState.parse(v))
    renames: dict[str, Any] = {k: override(rename=v) for k, v in _wire._RECORD_KEYS.items()}
    structure = make_dict_structure_fn(TaskRecord, conv, **renames)
    wire_fields = {"model", "state", "failCode", "failMsg", "createTime", "completeTime"}
    wire_fields.add("updateTime")

    def read(data: Any) -> TaskRecord:
        if not isinstance(data, dict):
            raise MalformedPayload("not an object")
        state = data.get("state")
        task_id = _wire.check_task_id(data.get("taskId") or data.get("task_id"))
        if not isinstance(state, str) or len(state) > 64:
            raise MalformedPayload("task record needs a string state")
        fields = {k: v for k, v in data.items() if k in wire_fields and v not in (None, "")}
        fields["taskId"] = task_id
        fields["state"] = state  # (it dropped a state of "" and raised KeyError: a defect)
        fields["rawState"] = state
        fields["resultUrls"] = _wire._result_urls(data.get("resultJson"))
        credits = data.get("creditsConsumed", data.get("consumeCredits"))
        if isinstance(credits, int | float) and not isinstance(credits, bool):
            fields["creditsConsumed"] = credits
        else:
            fields.pop("creditsConsumed", None)
        try:
            return structure(fields, TaskRecord)
        except (cattrs.BaseValidationError, ValueError, TypeError, OverflowError) as e:
            raise MalformedPayload(str(e)) from e

    return read


_read_as_before = _generated_reader()
_ids = _text.filter(lambda s: s.isprintable() and s == s.strip())
_wire_values = st.one_of(
    st.none(),
    st.just(""),
    st.booleans(),
    st.integers(-(2**40), 2**50),
    st.floats(allow_nan=True, allow_infinity=True),
    _text,
    st.sampled_from(["1774509092129", "12.5", "nan", "inf", "yesterday"]),
    st.lists(st.integers(), max_size=2),
)
_result_jsons = st.one_of(
    _wire_values,
    st.lists(st.sampled_from(["https://x.example/a.png", "http://h:8080/b?c=1", "bad url"]))
    .map(lambda urls: {"resultUrls": urls})
    .flatmap(lambda obj: st.sampled_from([obj, json.dumps(obj)])),
)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "taskId": st.one_of(_ids, _ids, _ids, _wire_values),
            "task_id": _text,
            "state": st.one_of(st.sampled_from([s.value for s in TaskState]), _wire_values),
            "model": _wire_values,
            "failCode": _wire_values,
            "failMsg": _wire_values,
            "createTime": _wire_values,
            "completeTime": _wire_values,
            "updateTime": _wire_values,
            "resultJson": _result_jsons,
            "creditsConsumed": _wire_values,
            "consumeCredits": _wire_values,
            "param": _wire_values,
        },
    )
)
@example({"taskId": "t", "state": "success", "creditsConsumed": True})
@example({"taskId": "t", "state": "", "createTime": "", "failMsg": "", "model": 0})
@example({"taskId": "t", "state": "success", "creditsConsumed": 1, "consumeCredits": 2.5})
@example({"taskId": "t", "state": "success", "consumeCredits": 3, "failCode": 0})
@settings(max_examples=400)
def test_the_reader_matches_the_generated_one(data: dict[str, Any]) -> None:
    try:
        expected: TaskRecord | type[MalformedPayload] = _read_as_before(data)
    except MalformedPayload:
        expected = MalformedPayload
    if expected is MalformedPayload:
        with pytest.raises(MalformedPayload):
            parse_record(data)
    else:
        assert parse_record(data) == expected


@given(_records(), st.booleans())
def test_any_record_round_trips_through_the_wire(rec: TaskRecord, old: bool) -> None:
    wire = record_to_wire(rec, old_schema=old)
    assert parse_record(json.loads(json.dumps(wire))) == rec
    for key, value in (("createTime", rec.create_time), ("updateTime", rec.update_time)):
        assert wire[key] == (None if value is None else round(value.timestamp() * 1000))
    urls = json.loads(wire["resultJson"])["resultUrls"] if rec.result_urls else []
    assert urls == [str(u) for u in rec.result_urls]
    assert wire["creditsConsumed" if not old else "consumeCredits"] == rec.credits_consumed


@pytest.mark.parametrize(
    "body",
    [
        {"code": 200, "data": {"taskId": "t", "state": "success"}},
        {"code": 200, "data": {"task_id": "t", "state": "success"}},
        {"code": 200, "taskId": "t", "data": {"state": "success"}},
    ],
)
def test_callback_task_id_places(body: dict[str, Any]) -> None:
    assert parse_callback(json.dumps(body).encode()).task_id == "t"


def test_failed_callback() -> None:
    body = {
        "code": 501,
        "msg": "Playground task failed.",
        "data": {
            "taskId": "t",
            "state": "fail",
            "failCode": "500",
            "failMsg": "boom",
            "resultJson": None,
        },
    }
    rec = parse_callback(json.dumps(body).encode())
    assert rec.state is TaskState.FAIL
    assert (rec.fail_code, rec.fail_msg) == ("500", "boom")


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[]", b'{"data": 1}', b'{"data": {"state": 1}}']
)
def test_not_a_callback(body: bytes) -> None:
    with pytest.raises(MalformedPayload):
        parse_callback(body)


def _env(code: int, key: str = "msg", data: object = None) -> bytes:
    return json.dumps({"code": code, key: "why", "data": data}).encode()


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (400, RequestRejected),
        (401, AuthenticationError),
        (402, InsufficientCredits),
        (404, NotFound),
        (408, ApiError),
        (422, RequestRejected),
        (429, RateLimited),
        (433, UsageLimitExceeded),
        (455, ServiceUnavailable),
        (500, ServerError),
        (501, ServerError),
        (505, FeatureDisabled),
    ],
)
@pytest.mark.parametrize("key", ["msg", "message"])
def test_business_errors_inside_http_200(code: int, cls: type[ApiError], key: str) -> None:
    with pytest.raises(cls) as info:
        read_envelope(200, _env(code, key), endpoint="x")
    assert info.value.code == code
    assert info.value.http_status == 200
    assert info.value.message == "why"
    assert type(info.value) is cls


def test_http_429_with_retry_after() -> None:
    with pytest.raises(RateLimited) as info:
        read_envelope(429, b"Too Many Requests", endpoint="x", retry_after=3.0)
    assert info.value.retry_after == 3.0
    with pytest.raises(RateLimited):
        read_envelope(429, _env(429), endpoint="x")


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (403, b"error code: 1010"),
        (502, b"<html>502 Bad Gateway</html>"),
        (503, b""),
        (200, b"<html>"),
    ],
)
def test_non_json_answers_are_server_errors(status: int, body: bytes) -> None:
    with pytest.raises(ServerError) as info:
        read_envelope(status, body, endpoint="x")
    assert info.value.http_status == status


def test_json_with_bad_http_status() -> None:
    with pytest.raises(ServerError) as info:
        read_envelope(500, _env(200), endpoint="x")
    assert info.value.code == 500


def test_success_answers() -> None:
    data = read_envelope(200, _env(200, data={"taskId": "t", "recordId": "r"}), endpoint="x")
    assert parse_task_id(data) == "t"
    assert parse_credits(read_envelope(200, _env(200, data=72.62), endpoint="x")) == 72.62
    for bad in [None, {}, {"taskId": ""}]:
        with pytest.raises(MalformedPayload):
            parse_task_id(bad)
    for bad_credit in [None, True, "lots", {}]:
        with pytest.raises(MalformedPayload):
            parse_credits(bad_credit)


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after("2.5") == 2.5
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now) == 10.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_create_body_round_trip() -> None:
    req = request(3)
    body = json.loads(create_task_body(req, URL("https://cb.example/x")))
    assert body["model"] == "seedream/4.5-edit"
    assert body["input"] == {
        "prompt": "edit number 3",
        "image_urls": ["https://img.example/3.png"],
        "aspect_ratio": "1:1",
        "quality": "basic",
    }
    assert parse_create_body(body) == (req, URL("https://cb.example/x"))


def test_the_body_leaves_a_requests_image_urls_unparsed() -> None:
    """A parked edit keeps its request (``EditResult.request``): printing its image URLs into
    the createTask body must not fill each URL's cache of parsed parts (yarl's private dict,
    ~190 bytes per image URL for as long as the edit waits, 1.35x -> 1.29x the bare loop's
    memory per parked edit); the text is what ``str`` gives, and the fingerprint too."""
    raws = [
        "https://img.example/t/a.png",
        "https://cdn.example/t/b.png?v=1&w=2",
        "http://h.example",
    ]
    req = EditRequest(prompt="p", image_urls=raws)
    before = req.fingerprint()
    body = json.loads(create_task_body(req, URL("https://cb.example/x")))
    assert [u._cache for u in req.image_urls] == [{}, {}, {}]
    assert req.fingerprint() == before
    assert body["input"]["image_urls"] == [str(u) for u in req.image_urls] == raws


@pytest.mark.parametrize("codec", ["orjson", "stdlib"])
def test_both_json_codecs_refuse_hostile_answers_alike(
    codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the speed extra or without, bad JSON is MalformedPayload, never another error."""
    if codec == "stdlib":
        monkeypatch.setattr(_wire, "_loads", json.loads)
        monkeypatch.setattr(_wire, "_dumps", _wire._stdlib_dumps)
    else:
        assert _wire._loads is orjson.loads  # the dev extra installs the speed extra
    for hostile in (b"[" * 100_000, b"{", b"\xff\xfe", b"", b'{"a": NaN', b"1" * 5000):
        with pytest.raises(MalformedPayload):
            _wire.load_json(hostile)
    assert _wire.load_json(b'{"code": 200, "data": {"taskId": "t"}}')["data"]["taskId"] == "t"
    body = create_task_body(
        EditRequest(prompt="é ✓", image_urls=["https://a.example/b.png"]),
        URL("https://h.example/cb/tok"),
    )
    assert json.loads(body)["input"]["prompt"] == "é ✓"
