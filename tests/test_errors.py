"""The exception tree: every error carries code, message and http_status."""

from __future__ import annotations

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
