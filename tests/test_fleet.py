"""Issue 10: clients on one Redis namespace act as one account (a real Redis server)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import attrs
import pytest

from seedream_async import (
    CallbackReceiver,
    CoordinatorUnavailable,
    EditResult,
    InvalidRequest,
    RateLimited,
    RedisCoordinator,
    Seedream5LiteEditRequest,
    SeedreamClient,
    SeedreamV4Request,
    ServerError,
    TaskRequest,
)
from seedream_async.simulator import Simulator, fake_png
from tests.balancer import Balancer
from tests.conftest import API_KEY, FAST, request, until
from tests.redis_server import RedisServer

KEY = b"fleet-hmac-key"
#: Safety polls out of reach: every result must come by callback.
NO_POLLS = {"safety_poll_after": 600.0, "safety_poll_every": 600.0}

Fleet = Callable[..., SeedreamClient]


@pytest.fixture
async def balancer() -> AsyncIterator[Balancer]:
    lb = Balancer()
    await lb.start()
    yield lb
    await lb.aclose()


@pytest.fixture
async def fleet(
    sim: Simulator, redis_server: RedisServer, namespace: str, balancer: Balancer
) -> AsyncIterator[Fleet]:
    """Replicas of one service: each a client with its own receiver, behind one balancer."""
    made: list[SeedreamClient] = []

    def replica(
        *,
        redis_url: str | None = None,
        ns: str | None = None,
        hmac: bool = False,
        api_key: str = API_KEY,
        **settings: Any,
    ) -> SeedreamClient:
        receiver = CallbackReceiver(public_url=balancer.url, hmac_key=KEY if hmac else None)
        coordinator = RedisCoordinator(
            redis_url or redis_server.url, namespace=ns or namespace, unavailable_timeout=1.0
        )
        client = SeedreamClient(
            api_key,
            base_url=sim.url,
            callbacks=receiver,
            coordinator=coordinator,
            settings=attrs.evolve(FAST, **settings),
        )
        made.append(client)
        return client

    yield replica
    for client in made:
        await client.aclose()


async def up(balancer: Balancer, *clients: SeedreamClient) -> None:
    """Open each replica and put its receiver behind the balancer."""
    for client in clients:
        await client.credits()
        receiver = client._receiver
        assert receiver is not None
        assert receiver.local_url is not None
        balancer.add(receiver.local_url)


async def until_stored(redis_server: RedisServer, *keys: str) -> None:
    """Wait until Redis holds every key: a process of the fleet stored it there."""
    from redis.asyncio import Redis  # noqa: PLC0415 (the optional extra)

    redis = Redis.from_url(redis_server.url)
    try:
        async with asyncio.timeout(10):
            while await redis.exists(*keys) < len(keys):  # noqa: ASYNC110 (Redis has no event for it)
                await asyncio.sleep(0.005)
    finally:
        await redis.aclose()


async def until_queued(redis_server: RedisServer, queue: str, waiter: str) -> None:
    """Wait until ``waiter`` waits in the shared ``queue``: it asked and was told to wait (the
    acquire script takes a waiter out of the queue in the same step that grants it)."""
    from redis.asyncio import Redis  # noqa: PLC0415 (the optional extra)

    redis = Redis.from_url(redis_server.url)
    try:
        async with asyncio.timeout(10):
            while await redis.zscore(queue, waiter) is None:  # noqa: ASYNC110 (no event for it)
                await asyncio.sleep(0.005)
    finally:
        await redis.aclose()


async def shared_window(redis_server: RedisServer, namespace: str) -> tuple[list[float], float]:
    """The createTask window's grants (each scored with when it stops counting as out, in
    ms) and the Redis server's clock, in ms."""
    from redis.asyncio import Redis  # noqa: PLC0415 (the optional extra)

    redis = Redis.from_url(redis_server.url)
    try:
        grants = await redis.zrange(f"{namespace}:create:window", 0, -1, withscores=True)
        seconds, micros = await redis.time()
    finally:
        await redis.aclose()
    return [score for _, score in grants], seconds * 1000 + micros / 1000


# --- the public face ------------------------------------------------------------------------


def test_repr_never_shows_the_password() -> None:
    for url in ("redis://:s3cret@127.0.0.1:6379/0", "rediss://user:s3cret@cache.example:6380"):
        shown = repr(RedisCoordinator(url, namespace="acct"))
        assert "s3cret" not in shown
        assert "acct" in shown
    with pytest.raises(ValueError, match="url"):
        RedisCoordinator("http://127.0.0.1:6379")


# --- shared limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [True, False], ids=["redis", "islands"])
async def test_three_clients_share_the_account_window(
    sim: Simulator, redis_server: RedisServer, namespace: str, shared: bool
) -> None:
    """Each client believes it may send 10 per 0.5 s; the account allows 10 in all."""
    sim.config.create_limit = (10, 0.5)
    settings = attrs.evolve(FAST, create_rate=10, create_period=0.5, create_attempts=50)
    clients = [
        SeedreamClient(
            API_KEY,
            base_url=sim.url,
            settings=settings,
            coordinator=RedisCoordinator(redis_server.url, namespace=namespace) if shared else None,
        )
        for _ in range(3)
    ]
    try:
        await asyncio.gather(*(c.edit(request(n)) for n in range(15) for c in clients))
    finally:
        for c in clients:
            await c.aclose()
    assert sim.stats.tasks_created == 45
    if shared:
        assert sim.stats.rate_limited == 0
        # Each createTask went out once, when the account's window had room: the service,
        # which admits 10 per 0.5 s (the islands meet it), took all 45 across five windows.
        assert sim.stats.create_requests == 45
    else:
        assert sim.stats.rate_limited > 0  # islands draw 429s: what the fleet mode prevents


async def test_a_client_that_closes_right_after_its_answers_frees_its_slots_on_time(
    sim: Simulator, redis_server: RedisServer, namespace: str
) -> None:
    # Its grants are stamped with when the answers came, and sent before it closes: the next
    # process gets the window one period later, not after a grant's hold (minutes) runs out.
    settings = attrs.evolve(FAST, create_rate=5, create_period=0.3, request_timeout=600.0)

    def client() -> SeedreamClient:
        coordinator = RedisCoordinator(redis_server.url, namespace=namespace)
        return SeedreamClient(API_KEY, base_url=sim.url, settings=settings, coordinator=coordinator)

    async with client() as first:
        await asyncio.gather(*(first.create_task(request(n)) for n in range(5)))
    stamps, now = await shared_window(redis_server, namespace)
    assert len(stamps) == 5
    assert max(stamps) <= now  # stamped when answered, not held on to its hold's end
    async with client() as second, asyncio.timeout(30):  # far less than a hold
        await second.create_task(request(5))
    assert sim.stats.rate_limited == 0


async def test_a_429_seen_by_one_client_pauses_all(
    sim: Simulator, redis_server: RedisServer, namespace: str
) -> None:
    sim.config.create_limit = (1, 60.0)
    sim.config.retry_after = 600.0  # the pause lasts past the test: only it can hold a client
    clients = [
        SeedreamClient(
            API_KEY,
            base_url=sim.url,
            settings=attrs.evolve(FAST, create_attempts=1),
            coordinator=RedisCoordinator(redis_server.url, namespace=namespace),
        )
        for _ in range(2)
    ]
    try:
        await clients[0].edit(request(0))
        with pytest.raises(RateLimited):
            await clients[0].edit(request(1))  # the service says 429: pause everyone
        before = sim.stats.create_requests
        await until_stored(redis_server, f"{namespace}:create:pause")
        second = asyncio.create_task(clients[1].create_task(request(2)))
        other = clients[1]._coordinator
        assert isinstance(other, RedisCoordinator)
        await until_queued(redis_server, f"{namespace}:create:queue", f"{other.instance}:create")
        assert sim.stats.create_requests == before  # the other client waits out the pause
        second.cancel()
        await asyncio.gather(second, return_exceptions=True)
    finally:
        for c in clients:
            await c.aclose()


# --- callback routing ----------------------------------------------------------------------------


async def test_callbacks_reach_their_owner_through_any_replica(
    sim: Simulator, fleet: Fleet, balancer: Balancer
) -> None:
    sim.config.latency = (0.02, 0.1)
    sim.config.callback_duplicates = 1
    replicas = [fleet(**NO_POLLS) for _ in range(3)]
    await up(balancer, *replicas)
    results = await asyncio.gather(
        *(r.edit(request(10 * i + n)) for i, r in enumerate(replicas) for n in range(10))
    )
    assert len(results) == 30
    assert sim.stats.polls == 0  # every one was woken by its callback
    assert sim.stats.callbacks_failed == 0  # duplicates too, whichever replica got them
    assert min(balancer.hits) > 0
    for result in results:
        assert result.urls == sim.record(result.task_id).result_urls


async def test_hostile_callbacks_on_a_replica_that_does_not_own_the_task(
    sim: Simulator, fleet: Fleet, balancer: Balancer, redis_server: RedisServer
) -> None:
    sim.config.latency = (30.0, 30.0)
    owner, other = fleet(hmac=True, **NO_POLLS), fleet(hmac=True, **NO_POLLS)
    stranger = fleet(ns="another-account", hmac=True, **NO_POLLS)
    await up(balancer, owner)
    await other.credits()
    await stranger.credits()
    handle = await owner.submit(request(0))
    assert handle.token is not None
    body = json.dumps({"code": 200, "data": {"taskId": handle.task_id, "state": "success"}})
    other_receiver, stranger_receiver = other._receiver, stranger._receiver
    assert other_receiver is not None
    assert stranger_receiver is not None
    stamp = str(int(time.time()))
    from seedream_async._signing import sign  # noqa: PLC0415

    good = {"X-Webhook-Timestamp": stamp, "X-Webhook-Signature": sign(KEY, handle.task_id, stamp)}
    forged = {**good, "X-Webhook-Signature": sign(b"wrong", handle.task_id, stamp)}
    url = other_receiver.url_for(handle.token).with_host("127.0.0.1")
    assert other_receiver.local_url is not None
    url = other_receiver.local_url.with_path(url.path)
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=body, headers=forged) as resp:
            assert resp.status == 401
        async with session.post(url, data=b"x" * (1 << 20), headers=good) as resp:
            assert resp.status == 413
        guessed = url.with_path(url.path.rsplit("/", 1)[0] + "/" + "g" * 24)
        async with session.post(guessed, data=body, headers=good) as resp:
            assert resp.status == 404  # nobody in the namespace issued it
        assert stranger_receiver.local_url is not None
        elsewhere = stranger_receiver.local_url.with_path(url.path)
        async with session.post(elsewhere, data=body, headers=good) as resp:
            assert resp.status == 404  # another namespace is another account
        assert not handle.done()
        async with session.post(url, data=body, headers=good) as resp:
            assert resp.status == 200  # valid, for a task another replica owns
        async with asyncio.timeout(2):
            result = await handle.result()
        assert result.task_id == handle.task_id
        async with session.post(url, data=body, headers=good) as resp:
            assert resp.status == 200  # a replay: idempotent across replicas


# --- results survive processes -------------------------------------------------------------------


async def test_resume_and_reconcile_elsewhere_resolve_from_redis_without_a_poll(
    sim: Simulator, fleet: Fleet, balancer: Balancer, redis_server: RedisServer, namespace: str
) -> None:
    sim.config.latency = (0.02, 0.05)
    first, second = fleet(**NO_POLLS), fleet(**NO_POLLS)
    await up(balancer, first, second)
    handle = await first.submit(request(0))
    result = await handle.result()
    stored = (f"{namespace}:task:{handle.task_id}", f"{namespace}:tokrec:{digest(handle.token)}")
    await until_stored(redis_server, *stored)  # the owner's share reached Redis
    polls = sim.stats.polls
    resumed = await asyncio.wait_for(second.resume(handle.task_id).result(), 2)
    assert resumed.urls == result.urls
    assert handle.token is not None
    reconciled = await asyncio.wait_for(second.reconcile(handle.token, request(0)), 2)
    assert reconciled.task_id == handle.task_id
    assert sim.stats.polls == polls


@pytest.mark.parametrize("how", ["resume", "reconcile"])
async def test_a_process_awaiting_anothers_task_wakes_with_the_owners_own_callback(
    sim: Simulator, fleet: Fleet, balancer: Balancer, how: str
) -> None:
    # The callback reaches the owner itself; another process awaits the same task meanwhile.
    sim.config.latency = (0.5, 0.5)
    owner, other = fleet(**NO_POLLS), fleet(**NO_POLLS)
    await up(balancer, owner)
    await other.credits()
    handle = await owner.submit(request(0))
    assert handle.token is not None
    token = handle.token

    async def elsewhere() -> EditResult:
        if how == "resume":
            return await other.resume(handle.task_id).result()
        return await (await other.reconcile(token, request(0))).result()

    # The safety polls are 600 s out: within this only the owner's callback (or resume's first
    # look) can end either wait.
    async with asyncio.timeout(30):
        result, seen = await asyncio.gather(handle.result(), elsewhere())
    assert seen.task_id == result.task_id
    assert seen.urls == result.urls
    assert sim.stats.polls <= 1  # at most resume's first look


async def test_a_result_nobody_else_awaits_is_not_broadcast(
    sim: Simulator, fleet: Fleet, balancer: Balancer, redis_server: RedisServer, namespace: str
) -> None:
    # Every replica hears every broadcast: one per task would cost each of them per task.
    from redis.asyncio import Redis  # noqa: PLC0415 (the spy, on the namespace's channel)

    sim.config.latency = (0.02, 0.05)
    owner = fleet(**NO_POLLS)
    await up(balancer, owner)
    spy = Redis.from_url(redis_server.url)
    pubsub = spy.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(f"{namespace}:results")
    try:
        results = await asyncio.gather(*(owner.edit(request(n)) for n in range(20)))
        assert len(results) == 20
        # The owner's batched share reached Redis (stored and, were it heard, published in one
        # script).
        await until_stored(redis_server, *(f"{namespace}:task:{r.task_id}" for r in results))
        polls = sim.stats.polls
        again = await asyncio.wait_for(owner.resume(results[0].task_id).result(), 2)
        assert again.task_id == results[0].task_id  # kept in Redis all the same
        assert sim.stats.polls == polls
        # Redis runs one command at a time and sends a subscriber its messages in order: a
        # message published now arrives after any broadcast of the stores above.
        await spy.publish(f"{namespace}:results", b"last")
        heard = []
        async with asyncio.timeout(10):
            while (message := await pubsub.get_message(timeout=1.0)) is None or (
                message["data"] != b"last"
            ):
                if message is not None:
                    heard.append(message)
        assert heard == []
    finally:
        await cast("Callable[[], Awaitable[None]]", pubsub.aclose)()
        await spy.aclose()


async def test_one_poll_serves_every_process_awaiting_a_task(
    sim: Simulator, redis_server: RedisServer, namespace: str
) -> None:
    sim.config.latency = (1.0, 1.0)
    settings = attrs.evolve(
        FAST, poll_schedule=attrs.evolve(FAST.poll_schedule, steps=((float("inf"), 0.2),))
    )
    clients = [
        SeedreamClient(
            API_KEY,
            base_url=sim.url,
            settings=settings,
            coordinator=RedisCoordinator(redis_server.url, namespace=namespace),
        )
        for _ in range(3)
    ]
    try:
        task_id = await clients[0].create_task(request(0))
        handles = [c.resume(task_id) for c in clients]
        results = await asyncio.gather(*(h.result() for h in handles))
    finally:
        for c in clients:
            await c.aclose()
    assert {r.task_id for r in results} == {task_id}
    # Three processes polling every 0.2 s for ~1 s would be ~15 polls; claims make it ~5.
    assert sim.stats.polls <= 8


# --- faults --------------------------------------------------------------------------------------


async def test_redis_down_then_back(
    sim: Simulator, own_redis: RedisServer, fleet: Fleet, balancer: Balancer
) -> None:
    """Down: accepted tasks still end (local callbacks, polls); new submissions wait a bounded
    time, then fail typed with nothing sent. Back: everything works again by itself."""
    sim.config.latency = (0.5, 0.5)
    client = fleet(redis_url=own_redis.url, safety_poll_after=0.3, safety_poll_every=0.3)
    await up(balancer, client)
    accepted = [await client.submit(request(n)) for n in range(3)]
    own_redis.stop()
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in accepted)), 10)
    assert len(results) == 3
    sent = sim.stats.create_requests
    # Bounded by the coordinator's unavailable_timeout (1 s), well inside this (and inside the
    # default 30 s it would be without it).
    with pytest.raises(CoordinatorUnavailable):
        async with asyncio.timeout(15):
            await client.edit(request(9))
    assert sim.stats.create_requests == sent  # nothing went out unaccounted
    own_redis.start()
    coordinator = client._coordinator
    assert isinstance(coordinator, RedisCoordinator)
    await until(coordinator.connected.is_set, within=10)
    assert (await client.edit(request(10))).urls


async def test_a_redis_restart_loses_no_accepted_task(
    sim: Simulator, own_redis: RedisServer, fleet: Fleet, balancer: Balancer
) -> None:
    sim.config.latency = (1.0, 1.5)
    replicas = [fleet(redis_url=own_redis.url, safety_poll_after=2.0) for _ in range(2)]
    await up(balancer, *replicas)
    handles = [
        await r.submit(request(10 * i + n)) for i, r in enumerate(replicas) for n in range(5)
    ]
    own_redis.stop()
    coordinators = [r._coordinator for r in replicas]
    await until(lambda: not any(isinstance(c, RedisCoordinator) and c.connected.is_set()
                                for c in coordinators))  # fmt: skip
    own_redis.start()  # an empty Redis: every stored key is gone
    results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 15)
    assert len(results) == 10


# --- real processes ------------------------------------------------------------------------------


class Worker:
    """A replica as a real process (tests/fleet_worker.py)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.accepted: list[str] = []
        #: Result URLs of each finished task, by task id.
        self.urls: dict[str, list[str]] = {}

    @classmethod
    async def start(cls, sim: Simulator, redis: RedisServer, namespace: str, lb: Balancer,
                    *args: str) -> Worker:  # fmt: skip
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.fleet_worker", str(sim.url), redis.url, namespace,
            str(lb.url), *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        worker = cls(proc)
        line = await worker.line()
        from yarl import URL  # noqa: PLC0415

        lb.add(URL(line["listen"]))
        return worker

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert raw, "the worker died"
        return dict(json.loads(raw))

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")

    async def finish(self) -> list[str]:
        while "done" not in (line := await self.line()):
            self.accepted.append(line["accepted"])
        await self.proc.wait()
        self.urls = dict(zip(line["done"], line["urls"], strict=True))
        return list(line["done"])


async def test_three_processes_behind_a_balancer_act_as_one_account(
    sim: Simulator, redis_server: RedisServer, namespace: str, balancer: Balancer
) -> None:
    """The simulator enforces the account's window across all its clients; each process
    believes it alone may use all of it. Zero 429s, every edit woken by its callback."""
    sim.config.create_limit = (10, 0.5)
    sim.config.latency = (0.05, 0.3)
    workers = [
        await Worker.start(
            sim, redis_server, namespace, balancer, "--name", f"w{i}", "--edits", "15"
        )
        for i in range(3)
    ]
    for worker in workers:
        worker.go()
    done = [await w.finish() for w in workers]
    assert [len(d) for d in done] == [15, 15, 15]
    assert all(w.proc.returncode == 0 for w in workers)
    assert sim.stats.tasks_created == 45
    assert sim.stats.rate_limited == 0
    assert sim.stats.polls == 0
    assert min(balancer.hits) > 0  # callbacks really crossed replicas


async def test_a_killed_process_loses_nothing_another_resumes_its_tasks(
    sim: Simulator, redis_server: RedisServer, namespace: str, balancer: Balancer
) -> None:
    sim.config.latency = (1.5, 2.0)
    doomed = await Worker.start(sim, redis_server, namespace, balancer, "--edits", "8")
    survivor_args = ["--name", "survivor", "--edits", "0", "--linger", "6"]
    survivor = await Worker.start(sim, redis_server, namespace, balancer, *survivor_args)
    doomed.go()
    survivor.go()
    while len(doomed.accepted) < 8:
        doomed.accepted.append((await doomed.line())["accepted"])
    doomed.proc.kill()  # SIGKILL: no goodbye
    await doomed.proc.wait()
    # The doomed process's callbacks now reach the survivor, which stores them in Redis.
    await until(lambda: sim.stats.callbacks_sent == 8, within=10)
    heir = await Worker.start(sim, redis_server, namespace, balancer, "--resume", *doomed.accepted)
    polls = sim.stats.polls
    heir.go()
    done = await heir.finish()
    assert sorted(done) == sorted(doomed.accepted)
    assert sim.stats.polls == polls  # all from the records Redis kept, not one poll
    assert sim.stats.callbacks_failed == 0
    assert sim.stats.tasks_created == 8  # nothing was submitted again
    assert await survivor.finish() == []


def test_the_cli_runs_a_batch_in_the_fleet(
    redis_server: RedisServer, namespace: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--redis`` (or $SEEDREAM_REDIS_URL) puts a CLI batch on the namespace's shared limits."""
    import redis  # noqa: PLC0415

    from tests.test_cli import run, small_manifest  # noqa: PLC0415

    manifest = small_manifest(tmp_path / "m.jsonl", 4)
    monkeypatch.setenv("SEEDREAM_REDIS_URL", redis_server.url)
    assert run("batch", str(manifest), "--simulate", "--namespace", namespace, "-q",
               "--out", str(tmp_path / "r.jsonl")) == 0  # fmt: skip
    keys = redis.Redis.from_url(redis_server.url).keys(f"{namespace}:*")
    assert any(k.startswith(f"{namespace}:create:".encode()) for k in keys)


async def test_an_account_wide_in_flight_cap_holds_across_clients(
    sim: Simulator, redis_server: RedisServer, namespace: str
) -> None:
    """Each client may have 100 in flight; the namespace allows 3 in all."""
    sim.config.latency = (0.2, 0.3)
    clients = [
        SeedreamClient(
            API_KEY,
            base_url=sim.url,
            settings=FAST,
            coordinator=RedisCoordinator(redis_server.url, namespace=namespace, max_in_flight=3),
        )
        for _ in range(2)
    ]
    try:
        results = await asyncio.gather(
            *(c.edit(request(10 * i + n)) for i, c in enumerate(clients) for n in range(6))
        )
    finally:
        for c in clients:
            await c.aclose()
    assert len(results) == 12
    # The most tasks the service held unfinished at any moment.
    spans = sorted((t.created, t.created + t.latency) for t in sim.tasks.values())
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most <= 3
    with pytest.raises(ValueError, match="max_in_flight"):
        RedisCoordinator(redis_server.url, max_in_flight=0)


async def test_a_createtask_that_never_left_gives_its_shared_grant_back(
    sim: Simulator, redis_server: RedisServer, namespace: str, unused_tcp_port: int
) -> None:
    # One createTask per 10 minutes for the namespace. The first process's createTask finds
    # nobody listening (no connection, so the service counted nothing): its grant is
    # refunded, and the second process sends at once instead of waiting out the window.
    settings = attrs.evolve(FAST, create_rate=1, create_period=600.0, create_attempts=1)

    def client(url: Any) -> SeedreamClient:
        coordinator = RedisCoordinator(redis_server.url, namespace=namespace)
        return SeedreamClient(API_KEY, base_url=url, settings=settings, coordinator=coordinator)

    async with client(f"http://127.0.0.1:{unused_tcp_port}") as nobody_home:
        with pytest.raises(ServerError, match="cannot connect to"):
            await nobody_home.create_task(request(0))
    assert (await shared_window(redis_server, namespace))[0] == []  # the grant came back
    async with client(sim.url) as second, asyncio.timeout(30):  # far less than the window
        await second.create_task(request(1))
    assert sim.stats.tasks_created == 1


# --- cancellation -------------------------------------------------------------------------------


async def test_a_round_trip_to_redis_that_is_cancelled_ends_cancelled(
    sim: Simulator, redis_server: RedisServer, namespace: str
) -> None:
    # Python 3.11's asyncio.wait_for drops a cancel that lands just as its inner work ends, and
    # redis-py sends every command through wait_for once it has a socket timeout. The
    # coordinator's background work (the listener, the heartbeat, the batches) then ran on
    # after aclose() cancelled it, and aclose() waited for it forever.
    coordinator = RedisCoordinator(redis_server.url, namespace=namespace)
    async with SeedreamClient(API_KEY, base_url=sim.url, coordinator=coordinator) as client:
        await client.credits()
        ran_on = []
        for ticks in [*range(12)] * 5:
            call = asyncio.create_task(coordinator.call(lambda redis: redis.ping()))
            for _ in range(ticks):
                await asyncio.sleep(0)
            if call.cancel():
                with contextlib.suppress(asyncio.CancelledError):
                    await call
                if not call.cancelled():
                    ran_on.append(ticks)
        assert ran_on == []


# --- what crosses Redis is sealed ---------------------------------------------------------------

EVIL = "https://evil.example/forged.png"
REFUSED = "not sealed by this account"


def forged(task_id: str) -> bytes:
    """A final record as anyone who can write to Redis would make one."""
    result = json.dumps({"resultUrls": [EVIL]})
    data = {"taskId": task_id, "state": "success", "resultJson": result, "creditsConsumed": 0}
    return json.dumps(data).encode()


def digest(token: str | None) -> str:
    assert token is not None
    return hashlib.sha256(token.encode()).hexdigest()


@attrs.define
class Attacker:
    """Anyone with write access to the fleet's Redis: a plain client, no key of the account."""

    redis: Any
    namespace: str
    caplog: pytest.LogCaptureFixture

    def key(self, *parts: str) -> str:
        return ":".join((self.namespace, *parts))

    async def stored(self, *parts: str) -> bytes:
        """The value at a key once a process of the fleet has stored it."""
        async with asyncio.timeout(5):
            while (value := await self.redis.get(self.key(*parts))) is None:  # noqa: ASYNC110 (Redis has no event for it)
                await asyncio.sleep(0.005)
        return bytes(value)

    def refusals(self) -> int:
        """Records the fleet refused (logged as hostile)."""
        return sum(REFUSED in r.getMessage() for r in self.caplog.records)


@pytest.fixture
async def attacker(
    redis_server: RedisServer, namespace: str, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Attacker]:
    from redis.asyncio import Redis  # noqa: PLC0415 (the optional extra)

    caplog.set_level(logging.WARNING, logger="seedream_async")
    client = Redis.from_url(redis_server.url)
    yield Attacker(client, namespace, caplog)
    await client.aclose()


async def test_a_forged_broadcast_resolves_nothing(
    sim: Simulator, fleet: Fleet, balancer: Balancer, attacker: Attacker
) -> None:
    # Anyone who can write to Redis can publish; a task id is no secret, and the digests of
    # tokens are key names there. Nothing published resolves a task unless sealed.
    sim.config.latency = (0.5, 0.5)
    owner = fleet(**NO_POLLS)
    await up(balancer, owner)
    coordinator = owner._coordinator
    assert isinstance(coordinator, RedisCoordinator)
    await until(coordinator.connected.is_set)
    handle = await owner.submit(request(0))
    h = digest(handle.token).encode()
    record = forged(handle.task_id)
    messages = [b"|" + record, h + b"|" + record, b"A" * 43 + b"|" + h + b"|" + record]
    for message in messages:
        assert await attacker.redis.publish(attacker.key("results"), message) >= 1
    await until(lambda: handle.done() or attacker.refusals() >= len(messages))
    assert not handle.done()
    result = await asyncio.wait_for(handle.result(), 5)  # by its own callback
    assert result.urls == sim.record(handle.task_id).result_urls
    assert EVIL not in {str(u) for u in result.urls}


@pytest.mark.parametrize("how", ["resume", "reconcile"])
async def test_a_forged_stored_record_resolves_nothing(
    sim: Simulator, fleet: Fleet, balancer: Balancer, attacker: Attacker, how: str
) -> None:
    # resume() and reconcile() elsewhere read the stored record first: a forged one is
    # refused, and the task still ends with the service's own result (the owner's callback,
    # broadcast to the process watching it, or that process's polls).
    sim.config.latency = (0.5, 0.5)
    owner, other = fleet(**NO_POLLS), fleet()
    await up(balancer, owner)
    await other.credits()
    handle = await owner.submit(request(0))
    assert handle.token is not None
    token = handle.token
    key = (
        attacker.key("task", handle.task_id)
        if how == "resume"
        else attacker.key("tokrec", digest(token))
    )
    await attacker.redis.set(key, forged(handle.task_id), ex=600)

    async def elsewhere() -> EditResult:
        if how == "resume":
            return await other.resume(handle.task_id).result()
        return await (await other.reconcile(token, request(0))).result()

    seen = await asyncio.wait_for(elsewhere(), 5)
    assert seen.task_id == handle.task_id
    assert seen.urls == sim.record(handle.task_id).result_urls
    assert attacker.refusals() >= 1


async def test_a_tampered_genuine_record_is_refused(
    sim: Simulator, fleet: Fleet, balancer: Balancer, attacker: Attacker
) -> None:
    sim.config.latency = (0.02, 0.05)
    owner, other = fleet(**NO_POLLS), fleet()
    await up(balancer, owner)
    await other.credits()
    done = await owner.submit(request(0))
    result = await done.result()
    genuine = await attacker.stored("task", done.task_id)
    shown = str(result.urls[0])
    assert shown.encode() in genuine
    tampered = genuine.replace(shown.encode(), EVIL.encode())
    await attacker.redis.set(attacker.key("task", done.task_id), tampered, keepttl=True)
    polls = sim.stats.polls
    resumed = await asyncio.wait_for(other.resume(done.task_id).result(), 5)
    assert resumed.urls == result.urls  # polled: the tampered record was refused
    assert sim.stats.polls > polls
    assert attacker.refusals() == 1


async def test_a_genuine_record_moved_to_another_token_is_refused(
    sim: Simulator, fleet: Fleet, balancer: Balancer, attacker: Attacker
) -> None:
    # A record sealed for one task's token, copied under another's: reconcile() of the second
    # must not end as the first task.
    sim.config.latency = (0.02, 0.02)
    owner, other = fleet(**NO_POLLS), fleet(**NO_POLLS)
    await up(balancer, owner)
    await other.credits()
    first = await owner.submit(request(0))
    await first.result()
    genuine = await attacker.stored("tokrec", digest(first.token))
    sim.config.latency = (0.5, 0.5)
    second = await owner.submit(request(1))
    assert second.token is not None
    await attacker.redis.set(attacker.key("tokrec", digest(second.token)), genuine, ex=600)
    reconciled = await asyncio.wait_for(other.reconcile(second.token, request(1)), 5)
    assert reconciled.task_id == second.task_id  # woken by the owner's broadcast instead
    assert (await reconciled.result()).urls == sim.record(second.task_id).result_urls
    assert attacker.refusals() == 1


async def test_a_forged_token_registration_routes_no_callback(
    sim: Simulator, fleet: Fleet, balancer: Balancer, attacker: Attacker
) -> None:
    # Without an HMAC key a callback is trusted for its token alone; a replica that does not
    # hold the token asks Redis whether the account issued it. A registration written there
    # by someone else must not make their callback, for a task they know the id of, land.
    sim.config.latency = (0.5, 0.5)
    owner, other = fleet(**NO_POLLS), fleet(**NO_POLLS)
    await up(balancer, owner)
    await other.credits()
    handle = await owner.submit(request(0))
    invented = "i" * 32
    await attacker.redis.set(attacker.key("tok", digest(invented)), b"1", ex=600)
    receiver = other._receiver
    assert receiver is not None
    assert receiver.local_url is not None
    url = receiver.local_url.with_path(receiver.url_for(invented).path)
    body = {"code": 200, "msg": "ok", "data": json.loads(forged(handle.task_id))}
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 404
    assert not handle.done()
    result = await asyncio.wait_for(handle.result(), 5)
    assert result.urls == sim.record(handle.task_id).result_urls


async def test_processes_with_another_api_key_accept_none_of_its_records(
    sim: Simulator, fleet: Fleet, balancer: Balancer, attacker: Attacker
) -> None:
    # Another key is another account: its records are sealed under another key, and refused.
    sim.config.latency = (0.02, 0.05)
    owner, stranger = fleet(**NO_POLLS), fleet(api_key="another-accounts-key")
    await up(balancer, owner)
    await stranger.credits()
    done = await owner.submit(request(0))
    result = await done.result()
    await attacker.stored("task", done.task_id)
    polls = sim.stats.polls
    seen = await asyncio.wait_for(stranger.resume(done.task_id).result(), 5)
    assert seen.urls == result.urls  # from its own poll
    assert sim.stats.polls > polls
    assert attacker.refusals() == 1


async def test_a_forged_poll_claim_stops_no_poll(
    sim: Simulator, redis_server: RedisServer, attacker: Attacker
) -> None:
    # One poll serves the fleet: a process skips its poll while another claims it. A claim
    # planted in Redis (never expiring), or a genuine one moved from another task, would stop
    # every poll of the task for good; a task whose callback is lost then waited its deadline.
    sim.config.latency = (0.3, 0.3)
    settings = attrs.evolve(
        FAST, poll_schedule=attrs.evolve(FAST.poll_schedule, steps=((float("inf"), 0.1),))
    )
    coordinator = RedisCoordinator(redis_server.url, namespace=attacker.namespace)
    async with SeedreamClient(
        API_KEY, base_url=sim.url, settings=settings, coordinator=coordinator
    ) as client:
        planted, moved = [await client.create_task(request(n)) for n in range(2)]
        assert await coordinator.claim_poll("another-task", 600.0)
        genuine = await attacker.stored("poll", "another-task")
        await attacker.redis.set(attacker.key("poll", planted), b"another-process")
        await attacker.redis.set(attacker.key("poll", moved), genuine)
        handles = [client.resume(planted), client.resume(moved)]
        results = await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 10)
    for result in results:
        assert result.urls == sim.record(result.task_id).result_urls
    assert attacker.refusals() >= 2


async def test_a_process_resuming_tasks_refuses_forged_records_and_polls(
    sim: Simulator, redis_server: RedisServer, balancer: Balancer, attacker: Attacker
) -> None:
    # A real process, its records sealed and checked there: every stored record it would
    # resume from is forged, so each task ends with the service's own result, by a poll.
    async with SeedreamClient(API_KEY, base_url=sim.url, settings=FAST) as client:
        ids = [await client.create_task(request(n)) for n in range(3)]
    for task_id in ids:
        await attacker.redis.set(attacker.key("task", task_id), forged(task_id), ex=600)
    heir = await Worker.start(sim, redis_server, attacker.namespace, balancer, "--resume", *ids)
    heir.go()
    assert sorted(await heir.finish()) == sorted(ids)
    for task_id in ids:
        assert heir.urls[task_id] == [str(u) for u in sim.record(task_id).result_urls]
    assert sim.stats.polls >= 3


async def test_a_coordinator_refused_by_a_second_client_still_serves_the_first(
    sim: Simulator, redis_server: RedisServer, namespace: str
) -> None:
    """Handing one coordinator to two clients is refused, and the refusal closes nothing."""
    coordinator = RedisCoordinator(redis_server.url, namespace=namespace)
    first = SeedreamClient(API_KEY, base_url=sim.url, coordinator=coordinator, settings=FAST)
    second = SeedreamClient(API_KEY, base_url=sim.url, coordinator=coordinator, settings=FAST)
    async with first:
        await first.credits()
        with pytest.raises(InvalidRequest, match="already serves another client"):
            await second.credits()
        await second.aclose()
        result = await asyncio.wait_for(first.edit(request(1)), 10)
        assert result.urls


async def test_replicas_share_tasks_of_every_model(
    sim: Simulator,
    fleet: Fleet,
    balancer: Balancer,
    *,
    tmp_path: Path,
    redis_server: RedisServer,
    namespace: str,
) -> None:
    """A mixed batch in one replica; another resumes each task from Redis, with every URL."""
    sim.config.latency = (0.02, 0.05)
    image = tmp_path / "in.png"
    image.write_bytes(fake_png("in", 0, 256))
    first, second = fleet(**NO_POLLS), fleet(**NO_POLLS)
    await up(balancer, first, second)
    requests: list[TaskRequest] = [
        request(0),
        Seedream5LiteEditRequest(prompt="make it red", image_urls=[image]),
        SeedreamV4Request(prompt="a fox", max_images=3),
    ]
    items = [item async for item in first.edit_many(requests, ordered=True)]
    assert all(item.ok for item in items)
    import redis  # noqa: PLC0415

    stored = redis.Redis.from_url(redis_server.url)
    keys = [f"{namespace}:task:{i.result.task_id}" for i in items if i.result is not None]
    await until(lambda: stored.exists(*keys) == len(keys))  # the owner shared every record
    polls = sim.stats.polls
    for item, sent in zip(items, requests, strict=True):
        assert item.result is not None
        resumed = await asyncio.wait_for(second.resume(item.result.task_id).result(), 2)
        assert resumed.record.model == sent.model
        assert resumed.urls == item.result.urls
    assert items[2].result is not None
    assert len(items[2].result.urls) == 3
    assert sim.stats.polls == polls  # from Redis, not from the service
