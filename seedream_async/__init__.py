"""
An asyncio-native SDK for Seedream 4.5 Edit (and every Seedream model) on the Apikley jobs API.

Submit edits concurrently under shared rate limits, await them through an embedded callback
receiver (polling is the safety net, or the mode where nothing can call back), and run
batches that survive crashes without paying twice.
"""

from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _version

from ._batch import BatchItem, BatchProgress
from ._catalog import (
    ImageResolution,
    ImageSize,
    JobRequest,
    ModelSpec,
    OutputFormat,
    Seedream5LiteEditRequest,
    Seedream5LiteRequest,
    Seedream5ProRequest,
    SeedreamV4EditRequest,
    SeedreamV4Request,
    TextToImageRequest,
    typed_models,
)
from ._client import ClientState, SeedreamClient
from ._config import InsecureBaseUrl, PollSchedule, Settings
from ._coordination import Coordinator, LocalCoordinator
from ._errors import (
    ApiError,
    AuthenticationError,
    ClientAlreadyOpen,
    ClientClosed,
    CoordinatorUnavailable,
    DownloadError,
    ExtraNotInstalled,
    FeatureDisabled,
    InsufficientCredits,
    InvalidRequest,
    JournalBusy,
    JournalError,
    JournalMismatch,
    NotFound,
    RateLimited,
    ReceiverError,
    RequestRejected,
    SeedreamError,
    ServerError,
    ServiceUnavailable,
    ServiceUnreachable,
    SubmissionUnknown,
    TaskFailed,
    TaskTimeout,
    UploadChanged,
    UploadError,
    UsageLimitExceeded,
)
from ._handle import TaskHandle
from ._models import (
    AspectRatio,
    EditRequest,
    EditResult,
    LocalImage,
    Quality,
    TaskRecord,
    TaskRequest,
    TaskState,
)
from ._otel import OpenTelemetryHook
from ._receiver import AsgiApp, CallbackReceiver, Reply
from ._redis import RedisCoordinator
from ._telemetry import (
    EditAccepted,
    EditAnswerLost,
    EditEnded,
    EditEvent,
    EditQueued,
    EditSent,
    Hook,
    ImagesDownloaded,
    RateLimitHit,
    TelemetryEvent,
)

__all__ = [
    "ApiError",
    "AsgiApp",
    "AspectRatio",
    "AuthenticationError",
    "BatchItem",
    "BatchProgress",
    "CallbackReceiver",
    "ClientAlreadyOpen",
    "ClientClosed",
    "ClientState",
    "Coordinator",
    "CoordinatorUnavailable",
    "DownloadError",
    "EditAccepted",
    "EditAnswerLost",
    "EditEnded",
    "EditEvent",
    "EditQueued",
    "EditRequest",
    "EditResult",
    "EditSent",
    "ExtraNotInstalled",
    "FeatureDisabled",
    "Hook",
    "ImageResolution",
    "ImageSize",
    "ImagesDownloaded",
    "InsecureBaseUrl",
    "InsufficientCredits",
    "InvalidRequest",
    "JobRequest",
    "JournalBusy",
    "JournalError",
    "JournalMismatch",
    "LocalCoordinator",
    "LocalImage",
    "ModelSpec",
    "NotFound",
    "OpenTelemetryHook",
    "OutputFormat",
    "PollSchedule",
    "Quality",
    "RateLimitHit",
    "RateLimited",
    "ReceiverError",
    "RedisCoordinator",
    "Reply",
    "RequestRejected",
    "Seedream5LiteEditRequest",
    "Seedream5LiteRequest",
    "Seedream5ProRequest",
    "SeedreamClient",
    "SeedreamError",
    "SeedreamV4EditRequest",
    "SeedreamV4Request",
    "ServerError",
    "ServiceUnavailable",
    "ServiceUnreachable",
    "Settings",
    "SubmissionUnknown",
    "TaskFailed",
    "TaskHandle",
    "TaskRecord",
    "TaskRequest",
    "TaskState",
    "TaskTimeout",
    "TelemetryEvent",
    "TextToImageRequest",
    "UploadChanged",
    "UploadError",
    "UsageLimitExceeded",
    "typed_models",
]

try:
    __version__ = _version("seedream-async")
except _PackageNotFoundError:  # pragma: no cover (running from a tree that is not installed)
    __version__ = "0+unknown"
