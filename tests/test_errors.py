"""The exception tree: every error carries code, message and http_status."""

from __future__ import annotations

import asyncio
import socket

import pytest
from yarl import URL

import seedream_async as sa
from tests.conftest import request

ERRORS = [
    sa.InvalidRequest("prompt", "must not be empty"),
    sa.ClientClosed("closed"),
    sa.ServerError("boom", code=500, http_status=502, endpoint="createTask"),
    sa.RateLimited("slow down", retry_after=2.0, code=429, http_status=429),
    sa.TaskFailed("task_1", "GENERATION_FAILED", "nope"),
    sa.TaskTimeout("task_1", 900.0),
    sa.SubmissionUnknown("reset after sending", request=request(0)),
    sa.JournalMismatch("other batch"),
    sa.DownloadError(URL("https://x/y.png"), "HTTP 404"),
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: type(e).__name__)
def test_every_error_carries_context(error: sa.SeedreamError) -> None:
    assert isinstance(error, sa.SeedreamError)
    assert error.message
    assert hasattr(error, "code")
    assert hasattr(error, "http_status")
    assert error.message in str(error)


def test_builtin_bases_and_fields() -> None:
    assert isinstance(ERRORS[0], ValueError)
    assert isinstance(ERRORS[1], RuntimeError)
    assert isinstance(ERRORS[5], TimeoutError)
    assert isinstance(ERRORS[7], ValueError)
    failed = ERRORS[4]
    assert isinstance(failed, sa.TaskFailed)
    assert (failed.code, failed.task_id, failed.fail_msg) == ("GENERATION_FAILED", "task_1", "nope")
    limited = ERRORS[3]
    assert isinstance(limited, sa.RateLimited)
    assert (limited.code, limited.http_status, limited.retry_after) == (429, 429, 2.0)
    for cls in (sa.AuthenticationError, sa.NotFound, sa.ServiceUnavailable, sa.FeatureDisabled):
        assert issubclass(cls, sa.ApiError)


def test_tree_is_drawn_in_the_docstring() -> None:
    from seedream_async import _errors  # noqa: PLC0415

    assert _errors.__doc__ is not None
    for name in sa.__all__:
        obj = getattr(sa, name)
        if isinstance(obj, type) and issubclass(obj, sa.SeedreamError):
            assert name in _errors.__doc__, name


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_refused_connection_fails_soon_in_one_line_naming_the_url() -> None:
    """A wrong base URL (nothing listening) used to take ~45-56 s of createTask retries."""
    base = f"http://127.0.0.1:{_closed_port()}"
    async with sa.SeedreamClient("k", base_url=base) as client:
        for call in (lambda: client.edit(request(0)), client.credits):
            async with asyncio.timeout(20):  # the connect retries take a second or two
                with pytest.raises(sa.ServiceUnreachable) as info:
                    await call()
            error = info.value
            assert isinstance(error, sa.ServerError)
            assert isinstance(error, ConnectionError)
            assert str(error.url).startswith(base)
            assert f"cannot connect to {base}/api/v1/" in str(error)
            assert "\n" not in str(error)
