"""
The seam between one process and the others on the same account.

A ``Coordinator`` decides what is shared: the rate limits, which callback tokens exist, the
final records, and who polls a task. ``LocalCoordinator`` (the default) shares nothing: every
client is on its own, exactly as without a fleet. ``RedisCoordinator`` (``_redis``, the
``redis`` extra) makes every client of one Redis namespace act as one account.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ._config import Settings
from ._lifecycle import Lifecycle, Offer, Task
from ._limits import Limiter, SlidingWindowLimiter
from ._models import TaskRecord
from ._telemetry import Via


class Coordinator(Protocol):
    """What a client needs from the rest of its fleet."""

    #: False for the in-process default: every call below is then a no-op.
    shared: bool

    def limiters(self, settings: Settings) -> tuple[Limiter, Limiter]:
        """The createTask and recordInfo limiters of this client."""

    async def start(self, lifecycle: Lifecycle) -> None:
        """Begin serving ``lifecycle`` (one client's): results for its tasks wake it."""

    async def aclose(self) -> None:
        """Stop every background task; idempotent."""

    async def register(self, token: str) -> None:
        """Make a callback token known to the fleet, before its createTask goes out."""

    async def hold(self, key: str) -> None:
        """Wait for an account-wide in-flight slot for submission ``key`` (when capped)."""

    def unhold(self, key: str) -> None:
        """Give back submission ``key``'s account-wide slot: its task ended."""

    async def deliver(self, token: str, record: TaskRecord) -> Offer:
        """A valid callback for a token this process does not hold: route it to its owner."""

    def share(self, task: Task, record: TaskRecord, via: Via | None) -> None:
        """A final record learned here (``via``: callback, poll, or the fleet itself): keep it
        for the fleet; tell the processes that may await it."""

    async def stored(
        self, *, task_id: str | None = None, token: str | None = None
    ) -> TaskRecord | None:
        """A final record the fleet already has for this task or token, if any; from now on,
        one stored anywhere reaches this process too (it awaits a task it did not submit)."""

    async def claim_poll(self, task_id: str, seconds: float) -> bool:
        """True if this process should poll ``task_id`` now (one poll serves the fleet)."""


@runtime_checkable
class AccountBound(Protocol):
    """A coordinator that seals what it shares under the account's key; the client gives it
    the key before ``start`` (a ``Coordinator`` without this method is never told it)."""

    def use_api_key(self, api_key: str) -> None:
        """Seal and check every shared record under a key derived from ``api_key``."""


class LocalCoordinator:
    """No fleet: the in-process default."""

    shared = False

    def limiters(self, settings: Settings) -> tuple[Limiter, Limiter]:
        """This process's own sliding windows."""
        return (
            SlidingWindowLimiter(settings.create_rate, settings.create_period),
            SlidingWindowLimiter(settings.query_rate, settings.query_period),
        )

    async def start(self, lifecycle: Lifecycle) -> None:
        """Nothing to start."""

    async def aclose(self) -> None:
        """Nothing to stop."""

    async def register(self, token: str) -> None:
        """Tokens are known to this process only."""

    async def hold(self, key: str) -> None:
        """``max_in_flight`` of the client is the only cap."""

    def unhold(self, key: str) -> None:
        """Nothing was held."""

    async def deliver(self, token: str, record: TaskRecord) -> Offer:
        """Nobody else holds tokens."""
        return Offer.UNKNOWN_TOKEN

    def share(self, task: Task, record: TaskRecord, via: Via | None) -> None:
        """Nobody to share with."""

    async def stored(
        self, *, task_id: str | None = None, token: str | None = None
    ) -> TaskRecord | None:
        """Nothing is stored beyond this process."""
        return None

    async def claim_poll(self, task_id: str, seconds: float) -> bool:
        """This process polls its own tasks."""
        return True
