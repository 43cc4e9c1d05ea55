"""No input to the receiver's handler raises: every request gets a deliberate status."""

from __future__ import annotations

import contextlib
import json
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from seedream_async import CallbackReceiver, Settings, _models
from seedream_async._lifecycle import Lifecycle
from seedream_async._limits import Slots
from seedream_async._signing import sign
from seedream_async._wire import parse_callback

STATUSES = {200, 400, 401, 404, 405, 413}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
record_like = st.fixed_dictionaries(
    {},
    optional={
        "taskId": json_values | st.text(min_size=1, max_size=30),
        "task_id": json_values,
        "state": st.sampled_from(["success", "fail", "waiting", "??"]) | json_values,
        "resultJson": json_values | st.just('{"resultUrls": ["http://a/b.png"]}'),
        "failCode": json_values,
        "failMsg": json_values,
        "createTime": json_values,
        "completeTime": st.integers() | st.floats() | json_values,
        "creditsConsumed": json_values,
        "consumeCredits": json_values,
    },
)
bodies = (
    st.binary(max_size=300)
    | json_values.map(lambda v: json.dumps(v).encode())
    | st.builds(
        lambda code, data, top: json.dumps({"code": code, "data": data, **top}).encode(),
        json_values,
        record_like,
        st.dictionaries(st.sampled_from(["taskId", "msg", "message"]), json_values),
    )
    | st.integers(1, 40_000).map(lambda n: b"[" * n + b"]" * n)
)
headers = st.dictionaries(
    st.sampled_from(["X-Webhook-Timestamp", "X-Webhook-Signature", "Content-Type"]),
    st.text(max_size=60) | st.just(str(int(time.time()))),
)


def receiver(hmac_key: bytes | None) -> CallbackReceiver:
    r = CallbackReceiver(hmac_key=hmac_key)
    r.attach(Lifecycle(Settings(), Slots(1), callbacks=True))
    return r


@settings(max_examples=400, deadline=None)
@given(
    method=st.sampled_from(["POST", "GET", "PUT", "DELETE", "PATCH", "post"]),
    token=st.text(max_size=40),
    body=bodies,
    head=headers,
    signed=st.booleans(),
)
def test_handle_never_raises(
    method: str, token: str, body: bytes, head: dict[str, str], signed: bool
) -> None:
    reply = receiver(b"k" if signed else None).handle(method, token, body, head)
    assert reply.status in STATUSES
    assert json.loads(reply.body)["code"] == reply.status


@settings(max_examples=300, deadline=None)
@given(body=bodies)
def test_parse_callback_only_raises_its_own_error(body: bytes) -> None:
    # MalformedPayload is a ValueError; anything else would become a 500
    with contextlib.suppress(ValueError):
        parse_callback(body)


def test_known_hostile_inputs() -> None:
    r = receiver(b"k")
    now = str(int(time.time()))
    ok = json.dumps({"data": {"taskId": "t", "state": "success"}}).encode()
    bad_sig = {"X-Webhook-Timestamp": now, "X-Webhook-Signature": "é"}
    assert r.handle("POST", "x", ok, bad_sig).status == 401
    deep = b"[" * 30_000 + b"]" * 30_000
    assert r.handle("POST", "x", deep, {}).status == 400
    good = {"X-Webhook-Timestamp": now, "X-Webhook-Signature": sign(b"k", "t", now)}
    assert r.handle("POST", "unknown-token", ok, good).status == 404


@settings(max_examples=300, deadline=None)
@given(
    task_id=st.text(min_size=1, max_size=40),
    skew=st.integers(-400, 400),
    stamp_text=st.none() | st.text(max_size=20),
    signature=st.text(max_size=80),
)
def test_signature_headers_never_raise(
    task_id: str, skew: int, stamp_text: str | None, signature: str
) -> None:
    """A well-formed callback with any signature headers: refused or accepted, never a 500."""
    body = json.dumps({"data": {"taskId": task_id, "state": "success"}}).encode()
    stamp = stamp_text if stamp_text is not None else str(int(time.time()) + skew)
    head = {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": signature}
    # 400: an id that is blank or padded is no task id at all.
    assert receiver(b"k").handle("POST", "tok", body, head).status in {400, 401, 404}


def test_a_stranger_cannot_make_the_url_parser_keep_long_hosts() -> None:
    """Callbacks are parsed before their token is checked: hosts a stranger makes up in result
    URLs must not pile up in the table that lets URLs share their host's string."""
    r = receiver(None)
    for n in range(20):
        host = f"h{n}" + "a" * 5_000 + ".example"
        data = {
            "taskId": "t",
            "state": "success",
            "resultJson": json.dumps({"resultUrls": [f"https://{host}/r.png"]}),
        }
        body = json.dumps({"code": 200, "data": data}).encode()
        assert r.handle("POST", f"stranger-{n}", body, {}).status == 404
        assert host not in _models._HOSTS
