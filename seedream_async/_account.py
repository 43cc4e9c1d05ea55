"""
Account conditions: answers that speak for the whole account, not for one task.

A 422, a 501 or a task's ``fail`` is that task's own outcome. A 401 (the key), 402
(credits), 433 (a sub-key's cap), 455 (maintenance) or a run of 5xx answers, timeouts and
network failures (an outage) is a condition of the account: while one holds, no coroutine
of the client sends a createTask, and with a fleet's coordinator no process does.

- 455 and an outage *pause*: submissions wait while the free credit call probes the service
  with backoff (honouring ``Retry-After``); they go on by themselves once it answers, or fail
  with ``ServiceUnavailable`` past ``Settings.outage_patience``.
- 402 and 433 *stop*: submissions raise ``InsufficientCredits`` / ``UsageLimitExceeded``
  at once, unsent; the credit call re-checks at most every ``Settings.credit_recheck``.
- 401 stops everything: ``AuthenticationError`` for every submission, and no more polls.

``Account.hold`` is None while nothing holds: the check on every submission's path is that
one attribute read.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine

import attrs

from ._config import Settings
from ._errors import (
    ApiError,
    AuthenticationError,
    InsufficientCredits,
    ServerError,
    ServiceUnavailable,
    UsageLimitExceeded,
    error_for_code,
)

log = logging.getLogger("seedream_async")


class Condition(enum.Enum):
    """What holds the account's createTasks back."""

    KEY_REJECTED = 401
    NO_CREDITS = 402
    USAGE_CAP = 433
    MAINTENANCE = 455
    OUTAGE = 503

    @property
    def pauses(self) -> bool:
        """True for conditions that pass by themselves (maintenance, an outage)."""
        return self in (Condition.MAINTENANCE, Condition.OUTAGE)

    @property
    def description(self) -> str:
        """The condition in a few words, for people."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS = {
    Condition.KEY_REJECTED: "the API key was rejected (401)",
    Condition.NO_CREDITS: "the account is out of credits (402)",
    Condition.USAGE_CAP: "the sub-key's usage cap is reached (433)",
    Condition.MAINTENANCE: "the service is under maintenance (455)",
    Condition.OUTAGE: "the service is down (5xx, timeouts)",
}

_BY_ERROR: tuple[tuple[type[ApiError], Condition], ...] = (
    (AuthenticationError, Condition.KEY_REJECTED),
    (InsufficientCredits, Condition.NO_CREDITS),
    (UsageLimitExceeded, Condition.USAGE_CAP),
    (ServiceUnavailable, Condition.MAINTENANCE),
)


@attrs.frozen(kw_only=True)
class Hold:
    """One condition, as it was learned (here, or from another process of the fleet)."""

    condition: Condition
    message: str
    #: Loop time it began.
    since: float
    #: The service's ``Retry-After``, in seconds, if it said.
    retry_after: float | None = None
    #: The balance last read while it holds (None: not read).
    balance: float | None = None

    def error(self, endpoint: str = "createTask", what: str = "not sent") -> ApiError:
        """A fresh error for one request held back by it (nothing was sent)."""
        message = f"{self.message}; {what}: {self.condition.description}"
        if self.condition is Condition.OUTAGE:
            return ServiceUnavailable(message, code=None, endpoint=endpoint)
        return error_for_code(self.condition.value, message, http_status=None, endpoint=endpoint)


Probe = Callable[[], Awaitable[float]]
Spawn = Callable[[Coroutine[object, object, object]], object]
Listener = Callable[[Hold | None], object]


class Account:
    """The one owner of the account's conditions, for every coroutine of one client."""

    __slots__ = (
        "_cleared",
        "_probe",
        "_probing",
        "_spawn",
        "checked",
        "failures",
        "hold",
        "listeners",
        "settings",
    )

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The condition that holds, if any: read before every createTask.
        self.hold: Hold | None = None
        #: 5xx answers, timeouts and network failures in a row (reset by any answer).
        self.failures = 0
        #: Loop time of the last credit check while a stop held.
        self.checked = -float("inf")
        #: Told of every change (the fleet shares it); a remote one comes in by ``adopt``.
        self.listeners: list[Listener] = []
        self._probe: Probe | None = None
        self._spawn: Spawn | None = None
        self._probing = False
        self._cleared: asyncio.Event | None = None

    def start(self, probe: Probe, spawn: Spawn) -> None:
        """Probe with ``probe`` (the free credit call), in background work ``spawn`` runs."""
        self._probe = probe
        self._spawn = spawn

    # --- what answers tell --------------------------------------------------------------

    def observe(self, error: ApiError) -> None:
        """Judge an error answer from any endpoint: an account condition, one failure more
        in a run of them (an outage), or a task's own outcome (nothing to do)."""
        for cls, condition in _BY_ERROR:
            if isinstance(error, cls):
                self._set(condition, error.message or str(error), _retry_after(error))
                return
        if isinstance(error, ServerError):
            self.failed(error)
        else:
            self.failures = 0

    def failed(self, error: BaseException) -> None:
        """A 5xx, a timeout or a network failure: the service may be down."""
        self.failures += 1
        if self.failures >= self.settings.outage_after and self.hold is None:
            self._set(
                Condition.OUTAGE, f"{self.failures} failures in a row, the last {error}", None
            )

    def answered(self) -> None:
        """An answer came (not a 5xx): the run of failures is over."""
        self.failures = 0

    def _set(self, condition: Condition, message: str, retry_after: float | None) -> None:
        held = self.hold
        if held is not None and held.condition is condition:
            return
        if held is not None and held.condition is Condition.KEY_REJECTED:
            return  # nothing outranks a rejected key
        now = asyncio.get_running_loop().time()
        self.hold = Hold(condition=condition, message=message, since=now, retry_after=retry_after)
        self.checked = now
        log.warning("createTasks held back: %s: %s", condition.description, message)
        self._tell(self.hold)
        if condition.pauses:
            self._start_probing()
        elif condition is Condition.NO_CREDITS:
            self._spawn_work(self._note_balance())

    def adopt(self, condition: Condition, message: str) -> None:
        """A condition another process of the fleet learned: hold it here too (untold)."""
        listeners, self.listeners = self.listeners, []
        try:
            self._set(condition, message, None)
        finally:
            self.listeners = listeners

    def clear(self, *, remote: bool = False) -> None:
        """The condition is over: submissions go on."""
        if self.hold is None:
            return
        log.warning("createTasks resume: %s is over", self.hold.condition.description)
        self.hold = None
        self.failures = 0
        if self._cleared is not None:
            self._cleared.set()
            self._cleared = None
        if not remote:
            self._tell(None)

    def _tell(self, hold: Hold | None) -> None:
        for listener in self.listeners:
            listener(hold)

    # --- what submissions do while one holds ----------------------------------------------

    async def admit(self, *, patient: bool = True) -> None:
        """Return once a createTask may go out; else raise the error that holds it back
        (at once for a pause too, unless ``patient``)."""
        while (hold := self.hold) is not None:
            if hold.condition.pauses and patient:
                await self._paused(hold)
            elif hold.condition.pauses or not await self._recheck(hold):
                raise hold.error()

    async def _paused(self, hold: Hold) -> None:
        """Wait for the probe to see the service answer, within the patience left."""
        loop = asyncio.get_running_loop()
        left = hold.since + self.settings.outage_patience - loop.time()
        if left <= 0:
            raise self._impatient(hold)
        if self._cleared is None:
            self._cleared = asyncio.Event()
        cleared = self._cleared
        self._start_probing()
        try:
            async with asyncio.timeout(left):
                await cleared.wait()
        except TimeoutError:
            raise self._impatient(hold) from None

    def _impatient(self, hold: Hold) -> ServiceUnavailable:
        patience = self.settings.outage_patience
        error = hold.error()
        return ServiceUnavailable(
            f"{error.message}, for over {patience:g} s (Settings.outage_patience)",
            code=error.code,
            endpoint="createTask",
        )

    async def _recheck(self, hold: Hold) -> bool:
        """Ask the credit call again (at most every ``credit_recheck``): True when the
        condition is over, a top-up noticed."""
        loop = asyncio.get_running_loop()
        if hold.condition is Condition.KEY_REJECTED or self._probe is None:
            return False
        if loop.time() - self.checked < self.settings.credit_recheck:
            return False
        self.checked = loop.time()
        try:
            balance = await self._probe()
        except ApiError as e:
            self.observe(e)
            return False
        if self.hold is not hold:
            return True
        if hold.condition is Condition.NO_CREDITS and not _topped_up(hold, balance):
            self.hold = attrs.evolve(hold, balance=balance)
            return False
        self.clear()
        return True

    async def _note_balance(self) -> None:
        """Read the balance a 402 left (for the report); free, and never holds anything up."""
        if self._probe is None:
            return
        try:
            balance = await self._probe()
        except ApiError as e:
            self.observe(e)
            return
        if (hold := self.hold) is not None and hold.condition is Condition.NO_CREDITS:
            self.hold = attrs.evolve(hold, balance=balance)

    # --- probing a paused service ---------------------------------------------------------

    def _start_probing(self) -> None:
        if not self._probing and self._probe is not None:
            self._probing = True
            self._spawn_work(self._probe_until_up())

    def _spawn_work(self, work: Coroutine[object, object, object]) -> None:
        if self._spawn is None:
            work.close()
            return
        self._spawn(work)

    async def _probe_until_up(self) -> None:
        """Probe the paused service with backoff until it answers; then clear the pause."""
        assert self._probe is not None
        attempt = 0
        delay = self._first_delay()
        try:
            while (hold := self.hold) is not None and hold.condition.pauses:
                await asyncio.sleep(delay)
                if self.hold is not hold:
                    continue
                try:
                    await self._probe()
                except ApiError as e:
                    self.observe(e)
                    attempt += 1
                    delay = _retry_after(e) or _backoff(self.settings, attempt)
                    continue
                if self.hold is hold:
                    self.clear()
        finally:
            self._probing = False

    def _first_delay(self) -> float:
        hold = self.hold
        if hold is not None and hold.retry_after is not None:
            return hold.retry_after
        return _backoff(self.settings, 0)


def _topped_up(hold: Hold, balance: float) -> bool:
    """More credits than when the 402 came (or some, when that was never read)."""
    return balance > (hold.balance if hold.balance is not None else 0.0)


def _retry_after(error: ApiError) -> float | None:
    return error.retry_after if isinstance(error, ServiceUnavailable) else None


def _backoff(settings: Settings, attempt: int) -> float:
    step: float = min(settings.backoff_max, settings.backoff_initial * 2.0**attempt)
    return step / 2 + random.uniform(0, step / 2)
