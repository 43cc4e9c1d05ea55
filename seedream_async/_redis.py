"""
``RedisCoordinator``: every client of one Redis namespace acts as one account.

What is shared, and how:

- **Rate limits.** One Lua script grants createTask (and recordInfo) slots from a sliding
  window kept on the Redis server, on the server's clock (``TIME``), so hosts with skewed
  clocks agree. Like the local limiter, a grant holds its slot while the request is out and
  is stamped when the answer is in (the service counts a request when it arrives). Each
  process queues its own waiters first come first served and sends one of them at a time to
  a shared queue ordered by arrival, so no process starves. A 429 seen anywhere pauses all.
- **Callback routing.** Tokens are registered, as a SHA-256 digest (nothing in Redis lets
  anyone build a callback URL), before createTask goes out. A replica that receives a
  callback for a token it does not hold validates it as usual, then one script checks the
  token exists, stores the record and publishes it; only then is the service answered 200.
- **Waking the owner: pub/sub.** One subscription per process. Pub/sub is at most once, so the
  stored record is the truth: after every (re)connect the listener re-reads the records of
  all its waiting tasks. Streams would replay, but need a consumer and trimming per process;
  keyspace notifications need server configuration we cannot assume. Polling stays the
  last resort either way. Every process hears every message, so only what someone else may
  await is published: a callback routed to its owner, a polled record, or a record of a task
  another process watches (``resume``/``reconcile`` there set a watch key first). The owner's
  own callback, the common case, is stored quietly.
- **Results survive processes.** Final records stay ``result_ttl`` (24 h, the result URLs'
  lifetime), by task id and by token: ``resume``/``reconcile`` anywhere resolve from them at
  once. A poll claim (``SET NX``) makes one poll serve every process awaiting a task.
- **Nothing in Redis is believed unsealed.** Final records (stored and published), token
  registrations and poll claims carry an HMAC-SHA256 tag under a key derived from the API key
  and the namespace (``_fleet_mac``), made once per record; one that fails is logged as
  hostile and ignored, and its task keeps its own callbacks and polls. What is not sealed
  (windows, pauses, in-flight slots, members) lives in Lua, which has no HMAC, and can only
  delay.
- **Faults.** Redis down: createTask waits up to ``unavailable_timeout`` and then raises
  ``CoordinatorUnavailable`` (never sends unaccounted); polls fall back to this process's share
  of the recordInfo rate (the rate divided by the processes last seen); accepted tasks keep
  resolving through local callbacks and polls. Everything reconnects by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast

from yarl import URL

from ._config import REDIS_URL_ENV, Settings, resolve_redis_url
from ._errors import ClientClosed, CoordinatorUnavailable, ExtraNotInstalled, InvalidRequest
from ._fleet_mac import FleetMac
from ._lifecycle import Lifecycle, Offer, Task
from ._limits import Limiter, SlidingWindowLimiter
from ._models import TaskRecord
from ._telemetry import Via
from ._wire import MalformedPayload, dump_json, load_json, parse_record, record_to_wire

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.client import PubSub

log = logging.getLogger("seedream_async")
T = TypeVar("T")
R = TypeVar("R")

_INSTALL = "pip install 'seedream-async[redis]'"
#: Seconds a batch nobody waits for (releases, this process's own results, freed slots) waits
#: for company: a round trip costs this process ~100 us of CPU, whatever it carries.
LINGER = 0.01
_BATCH = "seedream-redis-batch"
#: The kinds of sealed record (``_fleet_mac``): a final record, a token's registration, a
#: poll claim.
_RESULT, _TOKEN, _POLL = b"result", b"token", b"poll"
#: Milliseconds a poll claim is believed past its own end, by the wall clock of its maker (a
#: genuine one copied back later counts no longer): skew beyond this costs a poll, no more.
_CLAIM_SKEW_MS = 5000

# KEYS: window, queue, lease, pause, seq. ARGV: waiter, rate, period ms, lease ms, hold ms,
# grants wanted. Returns {1, id, id, ...} (at least one grant) or {0, milliseconds to wait}.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rate, period = tonumber(ARGV[2]), tonumber(ARGV[3])
local lease, hold, wanted = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)) do
  redis.call('ZREM', KEYS[2], gone)
  redis.call('ZREM', KEYS[3], gone)
end
redis.call('ZADD', KEYS[2], 'NX', now, ARGV[1])
redis.call('ZADD', KEYS[3], now + lease, ARGV[1])
redis.call('PEXPIRE', KEYS[2], lease * 4)
redis.call('PEXPIRE', KEYS[3], lease * 4)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
local paused = redis.call('PTTL', KEYS[4])
if paused > 0 then return {0, paused} end
local used = redis.call('ZCARD', KEYS[1])
local ahead = redis.call('ZRANK', KEYS[2], ARGV[1])
local free = rate - used - ahead
if free > 0 then
  local n = math.min(free, wanted)
  local last = redis.call('INCRBY', KEYS[5], n)
  local granted = {1}
  for id = last - n + 1, last do
    redis.call('ZADD', KEYS[1], now + hold, id)
    granted[#granted + 1] = id
  end
  redis.call('PEXPIRE', KEYS[1], period + hold)
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('ZREM', KEYS[3], ARGV[1])
  return granted
end
-- Free slots, but other processes are ahead: they take theirs within a round trip.
if used < rate then return {0, 2} end
local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, 1)
if oldest[2] then return {0, math.max(1, tonumber(oldest[2]) + period - now)} end
-- Every grant is still out: their answers are due any moment.
return {0, 5}
"""

# KEYS: window. ARGV: one string of "id:ms" pairs, space-separated: a grant id and the
# milliseconds since its answer came, or '-' to refund it. One argument for the whole batch:
# redis-py encodes and frames each argument on its own, and that, not Redis, was most of what a
# round trip cost this process. A grant is stamped with when its answer came, on the server's
# clock: now minus how long ago that was by this host's clock (a duration, so skew does not
# matter; the time the release took to get here only makes the stamp later, which is safe).
_RELEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for id, ms in string.gmatch(ARGV[1], '(%d+):(%S+)') do
  if ms == '-' then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], 'XX', now - tonumber(ms), id)
  end
end
return 1
"""

# KEYS: in-flight set. ARGV: submission, cap, milliseconds it may hold the slot at most.
_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return 1
end
return 0
"""

# KEYS: in-flight set. ARGV: submissions whose tasks ended.
_UNHOLD = """
for i = 1, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
end
return 1
"""

# ARGV: ttl seconds, the token keys' prefix, then "digest:tag" pairs, space-separated (the
# tag proves a process of this account registered the token: see _STORE).
_REGISTER = """
for h, tag in string.gmatch(ARGV[3], '(%x+):(%S+)') do
  redis.call('SET', ARGV[2] .. h, tag, 'EX', ARGV[1])
end
return 1
"""

# KEYS: pause. ARGV: milliseconds. The longest pause wins.
_PAUSE = """
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
end
return 1
"""

# KEYS: members. ARGV: this process. Returns how many processes were seen in the last 15 s.
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - 15000)
redis.call('PEXPIRE', KEYS[1], 60000)
return redis.call('ZCARD', KEYS[1])
"""

# KEYS: channel. ARGV: ttl s, the namespace's key prefix, then three per record: flags, task
# id, sealed record. Flags: issued '1' or '0', quiet '1' or '0', then the token digest (64
# characters, or nothing) and, when issued, the tag its registration must hold. The keys are
# built here, not sent: three arguments per record instead of eight (see _RELEASE). An issued
# token must have been registered by this account: Lua has no HMAC, so the caller sends the
# tag it expects and a string comparison (interned strings: no timing to learn) checks it.
# A fresh record is published as stored unless it is quiet and nobody watches its task or
# token. Per record: 404 unknown token, 208 already stored, 200 stored.
_STORE = """
local ttl, p = ARGV[1], ARGV[2]
local answers = {}
for i = 3, #ARGV, 3 do
  local flags, task, record = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local quiet, h = string.sub(flags, 2, 2) == '1', string.sub(flags, 3, 66)
  local tag = string.sub(flags, 67)
  local answer = 404
  if string.sub(flags, 1, 1) ~= '1' or h == '' or redis.call('GET', p .. 'tok:' .. h) == tag then
    answer = 208
    local fresh = false
    if h ~= '' and redis.call('SET', p .. 'tokrec:' .. h, record, 'NX', 'EX', ttl) then
      fresh = true
    end
    if redis.call('SET', p .. 'task:' .. task, record, 'NX', 'EX', ttl) then fresh = true end
    if fresh then
      answer = 200
      local heard = not quiet or redis.call('EXISTS', p .. 'watch:task:' .. task) == 1
      if not heard and h ~= '' then heard = redis.call('EXISTS', p .. 'watch:tok:' .. h) == 1 end
      if heard then redis.call('PUBLISH', KEYS[1], record) end
    end
  end
  answers[#answers + 1] = answer
end
return answers
"""

# KEYS: watch key, record key. ARGV: ttl s. From now on a quiet store of this record is
# published; returns the record if it is already stored (one atomic step: none is missed).
_WATCH = """
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return redis.call('GET', KEYS[2])
"""


# KEYS: poll claim. ARGV: this process's claim, milliseconds. Returns 1 if claimed; else the
# claim held ('' if it just ran out) and its milliseconds to live.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return {redis.call('GET', KEYS[1]) or '', redis.call('PTTL', KEYS[1])}
"""


def digest(token: str) -> str:
    """What Redis knows of a token: its SHA-256, never the token itself."""
    return hashlib.sha256(token.encode()).hexdigest()


class RedisCoordinator:
    """
    Share one account's limits, callbacks and results among processes, through Redis.

    Give every ``SeedreamClient`` of the account the same ``url`` and ``namespace``
    (``namespace`` isolates accounts sharing one Redis). ``url`` (default
    ``$SEEDREAM_REDIS_URL``) is ``redis://``,
    ``rediss://`` (TLS) or ``unix://``, with a password if needed; ``repr()`` never shows it.
    Needs the ``redis`` extra: ``pip install 'seedream-async[redis]'``.
    """

    shared = True

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str = "seedream",
        result_ttl: float = 24 * 3600.0,
        unavailable_timeout: float = 30.0,
        op_timeout: float = 2.0,
        max_in_flight: int | None = None,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401, PLC0415 (the optional extra)
        except ImportError:
            raise ExtraNotInstalled(f"RedisCoordinator needs the redis extra: {_INSTALL}") from None
        url = resolve_redis_url(url)
        if url is None:
            raise InvalidRequest("url", f"give the Redis URL, or set ${REDIS_URL_ENV}")
        parsed = URL(url) if isinstance(url, str) else None
        if parsed is None or parsed.scheme not in ("redis", "rediss", "unix"):
            raise InvalidRequest("url", "must be a redis://, rediss:// or unix:// URL")
        if not namespace or any(c.isspace() or c in "{}" for c in namespace):
            raise InvalidRequest("namespace", "must be a non-empty word without spaces or braces")
        for name, value in (
            ("result_ttl", result_ttl),
            ("unavailable_timeout", unavailable_timeout),
            ("op_timeout", op_timeout),
        ):
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise InvalidRequest(name, f"must be a finite number > 0, got {value!r}")
        if max_in_flight is not None and (
            isinstance(max_in_flight, bool)
            or not isinstance(max_in_flight, int)
            or max_in_flight < 1
        ):
            raise InvalidRequest("max_in_flight", f"must be an integer >= 1, got {max_in_flight!r}")
        #: Tasks accepted and not yet final across the whole namespace (None: no cap).
        self.max_in_flight = max_in_flight
        self._url = url
        self._shown = str(parsed.with_password("***")) if parsed.password else str(parsed)
        self.namespace = namespace
        self.result_ttl = result_ttl
        self.unavailable_timeout = unavailable_timeout
        self.op_timeout = op_timeout
        self.instance = secrets.token_hex(8)
        #: Round trips to Redis made by this process (a benchmark reads it).
        self.round_trips = 0
        self._redis: Redis | None = None
        self._lifecycle: Lifecycle | None = None
        self._settings = Settings()
        self._mac: FleetMac | None = None
        self._tokens: dict[str, str] = {}
        self._members = 1
        self._background: set[asyncio.Task[Any]] = set()
        self._scripts: dict[str, Any] = {}
        self._registrations: Batch[str, None] = Batch(self._register_batch, self.spawn)
        #: Final records to keep and publish: callbacks routed here, and records learned here.
        self._stores: Batch[tuple[str, str, bytes], int] = Batch(
            self._store_batch, self.spawn, linger=LINGER
        )
        self._unholds: Batch[str, None] = Batch(self._unhold_batch, self.spawn, linger=LINGER)
        self._batches: list[Batch[Any, Any]] = [self._registrations, self._stores, self._unholds]
        self.connected = asyncio.Event()

    def __repr__(self) -> str:
        return f"<RedisCoordinator {self._shown} namespace={self.namespace!r}>"

    # --- wiring -----------------------------------------------------------------------------

    def limiters(self, settings: Settings) -> tuple[Limiter, Limiter]:
        """createTask and recordInfo limits shared by the namespace."""
        self._settings = settings
        hold = settings.request_timeout + settings.connect_timeout
        return (
            SharedLimiter(self, "create", settings.create_rate, settings.create_period, hold),
            SharedLimiter(
                self, "query", settings.query_rate, settings.query_period, hold, fallback=True
            ),
        )

    def use_api_key(self, api_key: str) -> None:
        """Seal and check every record under a key derived from ``api_key`` and the namespace
        (the client calls this before ``start``; a started coordinator keeps its key)."""
        if self._lifecycle is None:
            self._mac = FleetMac(api_key, self.namespace)

    async def start(self, lifecycle: Lifecycle) -> None:
        """Connect lazily and start listening; Redis may be down now (it is retried)."""
        from redis.asyncio import Redis  # noqa: PLC0415 (the optional extra)

        if self._lifecycle is not None and self._lifecycle is not lifecycle:
            raise InvalidRequest("coordinator", "this coordinator already serves another client")
        if self._mac is None:
            raise InvalidRequest("coordinator", "has no API key to seal records with (use_api_key)")
        self._lifecycle = lifecycle
        # No socket_timeout: redis-py would send every command through asyncio.wait_for, which
        # on Python 3.11 drops a cancel that lands as the write ends (the cancelled work runs
        # on). Each round trip is bounded by asyncio.timeout instead (``call``, ``_listen``).
        self._redis = Redis.from_url(
            self._url,
            socket_timeout=None,
            socket_connect_timeout=self.op_timeout,
            health_check_interval=5,
        )
        scripts = {
            "acquire": _ACQUIRE,
            "release": _RELEASE,
            "register": _REGISTER,
            "pause": _PAUSE,
            "store": _STORE,
            "heartbeat": _HEARTBEAT,
            "hold": _HOLD,
            "unhold": _UNHOLD,
            "watch": _WATCH,
            "claim": _CLAIM,
        }
        for name, source in scripts.items():
            self._scripts[name] = self._redis.register_script(source)
        self.spawn(self._listen(), name="seedream-redis-listen")
        self.spawn(self._heartbeat(), name="seedream-redis-heartbeat")

    async def aclose(self) -> None:
        """Send what is batched, stop listening and close the connections; idempotent."""
        for batch in self._batches:
            batch.flush()
        sending = [t for t in self._background if t.get_name() == _BATCH]
        if sending and self._redis is not None:
            await asyncio.wait(sending, timeout=self.op_timeout)
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._redis is not None:
            redis, self._redis = self._redis, None
            with contextlib.suppress(Exception):
                await redis.aclose()

    def spawn(self, work: Coroutine[Any, Any, Any], *, name: str) -> None:
        """Run background work owned by this coordinator (cancelled by ``aclose``)."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.warning("redis background work %s failed: %s", task.get_name(), error)

    def key(self, *parts: str) -> str:
        """A key of this namespace."""
        return ":".join((self.namespace, *parts))

    async def call(self, work: Callable[[Redis], Awaitable[T]]) -> T:
        """One round trip; any failure of Redis is ``CoordinatorUnavailable``."""
        from redis.exceptions import RedisError  # noqa: PLC0415 (the optional extra)

        if self._redis is None:
            raise ClientClosed("the coordinator is not started or already closed")
        self.round_trips += 1
        try:
            async with asyncio.timeout(self.op_timeout):
                return await work(self._redis)
        except (RedisError, OSError) as e:  # TimeoutError is an OSError
            self.connected.clear()
            raise CoordinatorUnavailable(f"redis at {self._shown}: {type(e).__name__}: {e}") from e

    async def patiently(self, work: Callable[[Redis], Awaitable[T]]) -> T:
        """``call``, retried with backoff for up to ``unavailable_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.unavailable_timeout
        delay = 0.05
        while True:
            try:
                return await self.call(work)
            except CoordinatorUnavailable:
                if loop.time() + delay > give_up:
                    raise
            await asyncio.sleep(delay)
            delay = min(2 * delay, 1.0)

    async def script(
        self, name: str, keys: list[str], args: list[Any], *, patient: bool = False
    ) -> Any:
        """Run one of our Lua scripts (EVALSHA, loaded again after a Redis restart)."""
        run = self.patiently if patient else self.call
        return await run(lambda _: self._scripts[name](keys=keys, args=args))

    # --- tokens and results -----------------------------------------------------------------

    async def register(self, token: str) -> None:
        """Make ``token`` known to the namespace until long after its task's deadline.

        Tokens registered in the same loop tick go in one round trip.
        """
        h = digest(token)
        self._tokens[h] = token
        await self._registrations.add(h)

    async def hold(self, key: str) -> None:
        """Wait for one of the namespace's ``max_in_flight`` slots (no cap: at once)."""
        if self.max_in_flight is None:
            return
        s = self._settings
        lease = math.ceil((s.task_deadline + 2 * s.request_timeout + 60) * 1000)
        args = [key, self.max_in_flight, lease]
        delay = 0.01
        while not int(await self.script("hold", [self.key("inflight")], args, patient=True)):
            await asyncio.sleep(delay)  # a slot frees when some process's task ends
            delay = min(2 * delay, 0.2)

    def unhold(self, key: str) -> None:
        """Free ``key``'s slot (batched; if this is lost, the slot's lease runs out)."""
        if self.max_in_flight is not None and self._redis is not None:
            self._unholds.add_nowait(key)

    async def _unhold_batch(self, keys: list[str]) -> None:
        await self.script("unhold", [self.key("inflight")], list(keys))

    async def _register_batch(self, digests: list[str]) -> None:
        ttl = math.ceil(self._settings.task_deadline + 3600)
        pairs = " ".join(f"{h}:{self._token_tag(h)}" for h in digests)
        await self.script("register", [], [ttl, self.key("tok", ""), pairs], patient=True)

    def _token_tag(self, h: str) -> str:
        """What a token's registration holds: proof that this account registered it."""
        return self.sealer.tag(_TOKEN, h.encode()).decode("ascii")

    @property
    def sealer(self) -> FleetMac:
        """The account's seal for this namespace (``start`` refuses to run without one)."""
        if self._mac is None:
            raise ClientClosed("the coordinator is not started")
        return self._mac

    async def deliver(self, token: str, record: TaskRecord) -> Offer:
        """Store a validated callback for a token this process does not hold, and publish it.

        Callbacks arriving in the same loop tick go in one round trip.
        """
        answer = await self._stores.add(self._store_item(digest(token), record, issued=True))
        if answer == 404:
            return Offer.UNKNOWN_TOKEN
        return Offer.DUPLICATE if answer == 208 else Offer.ACCEPTED

    def share(self, task: Task, record: TaskRecord, via: Via | None) -> None:
        """Keep a final record learned here for the namespace (batched, in the background)."""
        if via == "fleet" or self._redis is None:
            return  # it came from Redis: already there
        h = digest(task.token) if task.token is not None else None
        # The owner's own callback: nobody else awaits it unless they watch it.
        quiet = via == "callback"
        self._stores.add_nowait(self._store_item(h, record, issued=False, quiet=quiet))

    def _store_item(
        self, h: str | None, record: TaskRecord, *, issued: bool, quiet: bool = False
    ) -> tuple[str, str, bytes]:
        """One record for the store script, sealed once for both its keys and its broadcast;
        ``issued``: its token must have been registered by this account."""
        h = h or ""
        flags = ("1" if issued else "0") + ("1" if quiet else "0") + h
        if issued and h:
            flags += self._token_tag(h)
        body = h.encode() + b"|" + dump_json(record_to_wire(record))
        return flags, record.task_id, self.sealer.seal(_RESULT, body)

    async def _store_batch(self, records: list[tuple[str, str, bytes]]) -> list[int]:
        args: list[Any] = [math.ceil(self.result_ttl), self.key("")]
        for record in records:
            args.extend(record)
        answers = await self.script("store", [self.key("results")], args)
        return [int(a) for a in answers]

    async def stored(
        self, *, task_id: str | None = None, token: str | None = None
    ) -> TaskRecord | None:
        """The final record the namespace holds for this task id or token, if any; from now
        on this process also hears when one is stored (it awaits another's task)."""
        h: str | None = None
        if task_id is not None:
            keys = [self.key("watch", "task", task_id), self.key("task", task_id)]
        else:
            h = digest(token or "")
            if token is not None:
                self._tokens[h] = token  # a broadcast names the token by its digest
            keys = [self.key("watch", "tok", h), self.key("tokrec", h)]
        ttl = math.ceil(self._settings.task_deadline + 3600)
        try:
            raw = await self.script("watch", keys, [ttl])
        except CoordinatorUnavailable:
            return None  # polling will tell
        opened = self._open(raw, keys[1], h=h, task_id=task_id)
        return None if opened is None else opened[1]

    async def claim_poll(self, task_id: str, seconds: float) -> bool:
        """True unless another process of this account polls ``task_id`` within ``seconds``."""
        ms = max(1, math.ceil(seconds * 1000))
        made = math.floor(time.time() * 1000)
        claim = self.sealer.seal(_POLL, f"{task_id}|{self.instance}|{made}|{ms}".encode())
        key = self.key("poll", task_id)
        try:
            answer = await self.script("claim", [key], [claim, ms])
        except CoordinatorUnavailable:
            return True  # alone for now: poll, within this process's share of the rate
        return answer == 1 or not self._held(key, task_id, answer[0], int(answer[1]))

    def _held(self, key: str, task_id: str, claim: bytes, ttl_ms: int) -> bool:
        """True if ``claim`` is a current claim of ``task_id`` by a process of this account."""
        if not claim:
            return False  # it ran out just now: poll
        body = self.sealer.open(_POLL, claim)
        task, _, made, ms = body.decode().rsplit("|", 3) if body else ("", "", "", "")
        if task != task_id:
            log.warning("refused a poll claim on %s not sealed by this account (hostile?)", key)
            return False
        age = math.floor(time.time() * 1000) - int(made)
        if ttl_ms < 0 or ttl_ms > int(ms) or age > int(ms) + _CLAIM_SKEW_MS:
            log.info("a stale poll claim on %s (a clock off, or copied back): polling", key)
            return False
        return True

    @property
    def members(self) -> int:
        """Processes of the namespace seen in the last 15 s (this one included)."""
        return self._members

    # --- the listener ------------------------------------------------------------------------

    async def _listen(self) -> None:
        """One subscription for the process; reconnects, and re-reads what it may have missed."""
        from redis.exceptions import RedisError  # noqa: PLC0415 (the optional extra)

        delay = 0.05
        while True:
            assert self._redis is not None
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.op_timeout):
                    await pubsub.subscribe(self.key("results"))
                self.connected.set()
                delay = 0.05
                await self._catch_up()
                while True:
                    async with asyncio.timeout(1.0 + self.op_timeout):  # a reconnect in it too
                        message = await pubsub.get_message(timeout=1.0)
                    if message is not None:
                        self._on_message(message.get("data"))
                        # A burst of buffered messages never suspends the read above: let the
                        # task just woken run now, not after the whole burst.
                        await asyncio.sleep(0)
            except (RedisError, OSError, CoordinatorUnavailable) as e:
                self.connected.clear()
                log.info("redis subscription lost (%s); reconnecting in %.2f s", e, delay)
            finally:
                with contextlib.suppress(Exception):
                    await _aclose_pubsub(pubsub)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 2.0)

    def _on_message(self, data: object) -> None:
        opened = self._open(data, self.key("results"))
        if opened is not None:
            self._resolve(opened[0], opened[1].task_id, opened[1])

    def _open(
        self, raw: object, where: str, *, h: str | None = None, task_id: str | None = None
    ) -> tuple[str, TaskRecord] | None:
        """A final record from ``where`` (its token digest and itself) if this account sealed
        it, for this token digest or task id when given; None if absent, or refused."""
        if raw is None:
            return None
        body = self.sealer.open(_RESULT, raw) if isinstance(raw, bytes) else None
        sealed_h, bar, wire = body.partition(b"|") if body is not None else (b"", b"", b"")
        record = _record(wire) if bar and len(sealed_h) in (0, 64) else None
        if (
            record is None
            or (h is not None and sealed_h != h.encode())
            or (task_id is not None and record.task_id != task_id)
        ):
            # Only someone else writing to this Redis, or a process with another API key on
            # this namespace, makes one: the waiter carries on with its callbacks and polls.
            log.warning("refused a record on %s not sealed by this account (hostile?)", where)
            return None
        return sealed_h.decode("ascii"), record

    def _resolve(self, h: str, task_id: str, record: TaskRecord) -> None:
        lifecycle = self._lifecycle
        if lifecycle is None:
            return
        token = self._tokens.get(h) if h else None
        if token is not None and lifecycle.has_token(token):
            lifecycle.offer(token, record, via="fleet")
        elif (task := lifecycle.get_task(task_id)) is not None:
            lifecycle.poll_answer(task, record, None, via="fleet")

    async def _catch_up(self) -> None:
        """Resolve waiting tasks whose record arrived while we were not listening."""
        lifecycle = self._lifecycle
        if lifecycle is None:
            return
        live = lifecycle.live()
        # (key, token digest or None, task id or None): what each stored record must be for.
        wanted: list[tuple[str, str | None, str | None]] = [
            (self.key("tokrec", h), h, None)
            for h in (digest(t.token) for t in live if t.token is not None)
        ]
        wanted += [(self.key("task", t.task_id), None, t.task_id) for t in live if t.task_id]
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            keys = [key for key, _, _ in chunk]

            async def read(redis: Redis, keys: list[str] = keys) -> list[Any]:
                return list(await redis.mget(keys))

            values = await self.call(read)
            for (key, h, task_id), raw in zip(chunk, values, strict=True):
                opened = self._open(raw, key, h=h, task_id=task_id)
                if opened is not None:
                    self._resolve(opened[0], opened[1].task_id, opened[1])

    async def _heartbeat(self) -> None:
        """Say this process is alive; learn how many are (the fallback share of the rate)."""
        members = self.key("members")
        while True:
            with contextlib.suppress(CoordinatorUnavailable):
                seen = await self.script("heartbeat", [members], [self.instance])
                self._members = max(1, int(seen))
            self._forget_finished_tokens()
            await asyncio.sleep(5.0)

    def _forget_finished_tokens(self) -> None:
        lifecycle = self._lifecycle
        if lifecycle is not None:
            self._tokens = {h: t for h, t in self._tokens.items() if lifecycle.has_token(t)}


async def _aclose_pubsub(pubsub: PubSub) -> None:
    """Close a subscription: newer redis-py types `aclose()`, older does not; one cast fits both."""
    close = cast("Callable[[], Awaitable[None]]", pubsub.aclose)
    await close()


def _record(raw: object) -> TaskRecord | None:
    if raw is None:
        return None
    try:
        record = parse_record(load_json(raw if isinstance(raw, bytes | str) else b""))
    except MalformedPayload:
        return None
    return record if record.is_final else None


class Batch(Generic[T, R]):
    """Items added during one loop tick, sent together in one round trip.

    ``send`` gets the items and returns one result per item (or None when there are none);
    ``add`` returns a future of the item's result. Items nobody waits for (``add_nowait``) may
    ``linger`` that many seconds for company: every round trip costs this process more CPU
    than the items in it. An item somebody waits for sends the batch at the next tick.
    """

    def __init__(
        self,
        send: Callable[[list[T]], Awaitable[list[R] | None]],
        spawn: Callable[..., None],
        *,
        linger: float = 0.0,
        most: int = 1000,
    ) -> None:
        self._send = send
        self._spawn = spawn
        self._linger = linger
        self._most = most
        self._items: list[T] = []
        self._waiters: list[asyncio.Future[R | None] | None] = []
        self._soon = False
        self._later: asyncio.TimerHandle | None = None

    def add(self, item: T) -> asyncio.Future[R | None]:
        """Queue ``item``; the future has its result once its batch was sent (or failed)."""
        waiter: asyncio.Future[R | None] = asyncio.get_running_loop().create_future()
        self._queue(item, waiter)
        return waiter

    def add_nowait(self, item: T) -> None:
        """Queue ``item``, nobody waiting for it."""
        self._queue(item, None)

    def _queue(self, item: T, waiter: asyncio.Future[R | None] | None) -> None:
        self._items.append(item)
        self._waiters.append(waiter)
        if self._soon:
            return
        loop = asyncio.get_running_loop()
        if waiter is not None or not self._linger or len(self._items) >= self._most:
            self._soon = True
            loop.call_soon(self._flush)
        elif self._later is None:
            self._later = loop.call_later(self._linger, self._flush)

    def flush(self) -> None:
        """Send what is queued now (the coordinator is closing)."""
        if self._items:
            self._flush()

    def _flush(self) -> None:
        if self._later is not None:
            self._later.cancel()
            self._later = None
        self._soon = False
        if not self._items:
            return  # sent already, by the other of the two ways it was scheduled
        items, waiters = self._items, self._waiters
        self._items, self._waiters = [], []
        self._spawn(self._deliver(items, waiters), name=_BATCH)

    async def _deliver(
        self, items: list[T], waiters: list[asyncio.Future[R | None] | None]
    ) -> None:
        try:
            results = await self._send(items)
        except BaseException as e:
            for waiter in waiters:
                if waiter is not None and not waiter.done():
                    waiter.set_exception(e)
                    waiter.exception()  # a cancelled caller never looks
            if not isinstance(e, Exception):
                raise
            return
        for n, waiter in enumerate(waiters):
            if waiter is not None and not waiter.done():
                waiter.set_result(None if results is None else results[n])


_LOCAL = object()  # "Redis is down: take a grant of this process's share instead"


class SharedLimiter:
    """
    A sliding window shared by the namespace (see the module docstring).

    This process's waiters queue first come first served; one fetcher asks Redis for as many
    grants as there are waiters, in one round trip, and hands them out in order. Releases go
    back in batches, one round trip per loop tick.
    """

    def __init__(
        self,
        coordinator: RedisCoordinator,
        name: str,
        rate: int,
        period: float,
        hold: float,
        *,
        fallback: bool = False,
    ) -> None:
        self._c = coordinator
        self.name = name
        self.rate = rate
        self.period = period
        self._hold_ms = math.ceil(hold * 1000)
        self._waiter = f"{coordinator.instance}:{name}"
        self._waiters: deque[asyncio.Future[object]] = deque()
        self._fetching = False
        self._keys = [
            coordinator.key(name, k) for k in ("window", "queue", "lease", "pause", "seq")
        ]
        self._releases: Batch[tuple[int, bool, float], None] = Batch(
            self._release_batch, coordinator.spawn, linger=LINGER
        )
        coordinator._batches.append(self._releases)
        self._fallback_allowed = fallback
        self._fallback: SlidingWindowLimiter | None = None
        self._closed = False

    def take(self) -> bool:
        """Never at once: every shared grant comes from Redis (``acquire()``)."""
        return False

    async def acquire(self) -> object:
        """A shared grant (its id), or with Redis down, a grant of this process's share."""
        if self._closed:
            raise ClientClosed("the client was closed while this request waited for its turn")
        waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        if not self._fetching:
            self._fetching = True
            self._c.spawn(self._fetch(), name="seedream-redis-grants")
        try:
            grant = await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(waiter.result(), sent=False)
            raise
        return await self._local() if grant is _LOCAL else grant

    async def _fetch(self) -> None:
        """Ask Redis for grants while anyone waits; whatever happens, no waiter hangs."""
        try:
            while not self._closed:
                wanted = sum(1 for w in self._waiters if not w.done())
                if wanted == 0:
                    self._waiters.clear()
                    return
                try:
                    granted, values = await self._ask(min(wanted, self.rate))
                except CoordinatorUnavailable as e:
                    self._hand_out(_LOCAL if self._fallback_allowed else e, all_waiters=True)
                    continue
                if granted:
                    for grant in values:
                        if not self._hand_out(grant):
                            self.release(grant, sent=False)  # its waiter left: refund it
                else:
                    await asyncio.sleep(min(values[0], 1000) / 1000)
        except BaseException as e:
            self._hand_out(e, all_waiters=True)
            if not isinstance(e, Exception):
                raise
        finally:
            self._fetching = False

    def _hand_out(self, grant: object, *, all_waiters: bool = False) -> bool:
        """Give ``grant`` (or an error) to the longest waiter (or all); False if none waits."""
        given = False
        while self._waiters:
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            if isinstance(grant, BaseException):
                waiter.set_exception(grant)
            else:
                waiter.set_result(grant)
            given = True
            if not all_waiters:
                break
        return given

    async def _ask(self, wanted: int) -> tuple[bool, list[int]]:
        # createTask waits for Redis (bounded); polls fall back to the local share at once.
        patient = not self._fallback_allowed
        answer = await self._c.script("acquire", self._keys, self._args(wanted), patient=patient)
        return bool(int(answer[0])), [int(v) for v in answer[1:]]

    def _args(self, wanted: int) -> list[Any]:
        lease = 2000
        return [
            self._waiter,
            self.rate,
            math.ceil(self.period * 1000),
            lease,
            self._hold_ms,
            wanted,
        ]

    async def _local(self) -> object:
        share = max(1, self.rate // max(1, self._c.members))
        if self._fallback is None or self._fallback.rate != share:
            self._fallback = SlidingWindowLimiter(share, self.period)
        await self._fallback.acquire()
        return self._fallback

    def release(self, grant: object = None, *, sent: bool = True) -> None:
        """Stamp (or refund) a grant; Redis hears of it with the others of its batch."""
        if isinstance(grant, SlidingWindowLimiter):
            grant.release(sent=sent)
        elif isinstance(grant, int):
            self._releases.add_nowait((grant, sent, asyncio.get_running_loop().time()))

    async def _release_batch(self, grants: list[tuple[int, bool, float]]) -> None:
        # If this fails, the grants still count until their hold runs out: safe, never over.
        now = asyncio.get_running_loop().time()
        # Whole milliseconds, rounded down: the stamp never comes out earlier than it was.
        pairs = " ".join(
            f"{grant}:{math.floor((now - answered) * 1000) if sent else '-'}"
            for grant, sent, answered in grants
        )
        await self._c.script("release", self._keys[:1], [pairs])

    def pause_until(self, when: float) -> None:
        """Pause every process of the namespace until loop time ``when``."""
        ms = math.ceil(max(0.0, when - asyncio.get_running_loop().time()) * 1000)
        if ms > 0:
            self._c.spawn(
                self._c.script("pause", self._keys[3:4], [ms]), name="seedream-redis-pause"
            )

    def close(self) -> None:
        """Grant nothing more: every waiter gets ``ClientClosed``."""
        self._closed = True
        self._releases.flush()
        self._hand_out(
            ClientClosed("the client was closed while this request waited"), all_waiters=True
        )
        if self._fallback is not None:
            self._fallback.close()
