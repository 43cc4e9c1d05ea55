"""
The exception tree of seedream_async.

Every error the SDK raises is a ``SeedreamError``; no raw aiohttp or JSON exception ever
reaches a caller (it is kept as ``__cause__``; ``ServiceUnreachable``'s one line says all
of it)::

    SeedreamError
    ├── InvalidRequest (ValueError)        bad input, refused before any HTTP is sent
    ├── ClientClosed (RuntimeError)        the client was used after ``aclose()``
    ├── ClientAlreadyOpen (RuntimeError)   a second ``async with`` on an open client
    ├── ApiError                           the service (or a proxy in front of it) said no
    │   ├── AuthenticationError            401
    │   ├── InsufficientCredits            402
    │   ├── NotFound                       404
    │   ├── RequestRejected                400, 422
    │   ├── RateLimited                    429, with ``retry_after``
    │   ├── UsageLimitExceeded             433
    │   ├── ServiceUnavailable             455 (``retry_after``), or an outage outlasting patience
    │   ├── ServerError                    500, any other 5xx, a non-JSON answer, a network failure
    │   │   └── ServiceUnreachable (ConnectionError)  no connection could be opened to the URL
    │   └── FeatureDisabled                505
    ├── TaskFailed                         the task ended in state ``fail``
    ├── TaskTimeout (TimeoutError)         the task did not end before its deadline
    ├── SubmissionUnknown                  createTask may or may not have made a (paid) task
    ├── JournalError                       a batch journal cannot be used
    │   ├── JournalMismatch (ValueError)   it belongs to other inputs
    │   └── JournalBusy                    another run holds it
    ├── ReceiverError (OSError)            the callback receiver could not start (say, bind)
    ├── CoordinatorUnavailable             the fleet's Redis could not be reached in time
    ├── ExtraNotInstalled (ImportError)    an optional extra is needed (say, redis)
    ├── UploadError                        a local image could not be uploaded
    │   └── UploadChanged                  the file changed (or became a link) after its check
    └── DownloadError                      a result image could not be fetched, or was refused
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from yarl import URL


class SeedreamError(Exception):
    """
    Base of every error raised by seedream_async.

    Every error has ``code`` (the service's body code, a task's fail code, or None),
    ``message`` (the reason, without the context the ``str()`` adds) and ``http_status``
    (None unless an HTTP answer caused it).
    """

    code: int | str | None = None
    http_status: int | None = None

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(SeedreamError, ValueError):
    """An input was refused before anything was sent; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ClientClosed(SeedreamError, RuntimeError):
    """The client (or receiver) was used after it was closed."""


class ClientAlreadyOpen(SeedreamError, RuntimeError):
    """``async with`` on a client another ``async with`` already holds open."""


class ApiError(SeedreamError):
    """The service answered with an error; ``code`` is the body code, else the HTTP status."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        http_status: int | None = None,
        endpoint: str | None = None,
    ) -> None:
        super().__init__(f"{message} (code={code}, http_status={http_status}, {endpoint})")
        self.message = message
        self.code: int | None = code
        self.http_status = http_status
        self.endpoint = endpoint


class AuthenticationError(ApiError):
    """401: the API key is missing or wrong."""


class InsufficientCredits(ApiError):
    """402: the account has not enough credits."""


class NotFound(ApiError):
    """404: no such task (or endpoint)."""


class RequestRejected(ApiError):
    """400 or 422: the service refused the parameters."""


class RateLimited(ApiError):
    """429: too many requests; ``retry_after`` is in seconds when the service said."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class UsageLimitExceeded(ApiError):
    """433: a sub-key's usage cap is exceeded."""


class ServiceUnavailable(ApiError):
    """455: the service is under maintenance (or down longer than ``outage_patience``).

    ``retry_after`` is in seconds when the service said."""

    retry_after: float | None = None


class ServerError(ApiError):
    """500, any other 5xx, a non-JSON answer, or the network failing."""


class ServiceUnreachable(ServerError, ConnectionError):
    """No connection could be opened to ``url`` (refused, no such host, TLS): nothing was sent."""

    def __init__(self, url: URL, reason: str, *, endpoint: str | None = None) -> None:
        super().__init__(f"network failure: cannot connect to {url}: {reason}", endpoint=endpoint)
        self.url = url
        self.reason = reason


class FeatureDisabled(ApiError):
    """505: the feature is disabled."""


class TaskFailed(SeedreamError):
    """A task ended in state ``fail``."""

    def __init__(self, task_id: str, fail_code: str | None, fail_msg: str | None) -> None:
        super().__init__(f"task {task_id} failed: {fail_code}: {fail_msg}")
        self.message = fail_msg or "task failed"
        self.code = fail_code
        self.task_id = task_id
        self.fail_code = fail_code
        self.fail_msg = fail_msg


class TaskTimeout(SeedreamError, TimeoutError):
    """A task did not reach a final state before its deadline."""

    def __init__(self, task_id: str, deadline: float) -> None:
        message = f"did not finish within {deadline:g} s"
        super().__init__(f"task {task_id} {message}")
        self.message = message
        self.task_id = task_id
        self.deadline = deadline


class SubmissionUnknown(SeedreamError):
    """
    createTask was sent but its answer was lost: a paid task may exist.

    It is never resubmitted on its own; ``request`` and ``callback_url`` let the caller
    decide (a callback on that URL proves the task exists).
    """

    def __init__(
        self,
        reason: str,
        *,
        request: object,
        callback_url: URL | None = None,
    ) -> None:
        super().__init__(f"createTask outcome unknown: {reason}")
        self.message = reason
        self.reason = reason
        self.request = request
        self.callback_url = callback_url


class JournalError(SeedreamError):
    """A batch journal cannot be used (unreadable, not a journal, or in use); ``path`` names it."""

    def __init__(self, message: str, *, path: object = None) -> None:
        super().__init__(message)
        self.path = path


class JournalMismatch(JournalError, ValueError):
    """A batch journal was written for other inputs than the ones given."""


class JournalBusy(JournalError):
    """Another run (``holder`` says which, when known) holds the batch journal."""

    def __init__(self, message: str, *, path: object = None, holder: str | None = None) -> None:
        super().__init__(message, path=path)
        self.holder = holder


class ReceiverError(SeedreamError, OSError):
    """The callback receiver could not start (its address is in use, say)."""


class CoordinatorUnavailable(SeedreamError):
    """The fleet's coordinator (Redis) could not be reached in time; nothing was sent."""


class ExtraNotInstalled(SeedreamError, ImportError):
    """A feature needs an optional extra that is not installed; the message says which."""


class UploadError(SeedreamError):
    """A local image could not be uploaded; ``path`` names it (None for bytes)."""

    def __init__(self, path: object, reason: str) -> None:
        super().__init__(f"upload of {path or 'image bytes'} failed: {reason}")
        self.message = reason
        self.path = path
        self.reason = reason


class UploadChanged(UploadError):
    """The file is not the one checked (its size, content or kind changed, or a link replaced
    it); nothing more of it is sent."""


class DownloadError(SeedreamError):
    """A result image could not be downloaded."""

    def __init__(self, url: URL, reason: str) -> None:
        super().__init__(f"download of {url} failed: {reason}")
        self.message = reason
        self.url = url
        self.reason = reason


_BY_CODE: dict[int, type[ApiError]] = {
    400: RequestRejected,
    401: AuthenticationError,
    402: InsufficientCredits,
    404: NotFound,
    422: RequestRejected,
    429: RateLimited,
    433: UsageLimitExceeded,
    455: ServiceUnavailable,
    505: FeatureDisabled,
}


def error_for_code(
    code: int,
    message: str,
    *,
    http_status: int | None,
    endpoint: str | None = None,
    retry_after: float | None = None,
) -> ApiError:
    """Build the ``ApiError`` subclass that a wire code stands for."""
    cls = _BY_CODE.get(code, ServerError if code >= 500 else ApiError)
    if cls is RateLimited:
        return RateLimited(
            message,
            retry_after=retry_after,
            code=code,
            http_status=http_status,
            endpoint=endpoint,
        )
    error = cls(message, code=code, http_status=http_status, endpoint=endpoint)
    if retry_after is not None and isinstance(error, ServiceUnavailable):
        error.retry_after = retry_after
    return error
