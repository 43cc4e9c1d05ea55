"""Issue 9 §1 and §7, end to end: queue time never counts against a paid task; close is final."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import attrs
import pytest

from seedream_async import (
    CallbackReceiver,
    ClientClosed,
    ReceiverError,
    SeedreamClient,
    ServerError,
    SubmissionUnknown,
)
from seedream_async.simulator import Simulator
from tests.conftest import FAST, ClientFactory, request, sdk_tasks, until

# --- §1: waiting for a slot or the limiter never counts -----------------------------------------


@pytest.mark.parametrize("callbacks", [False, True], ids=["polling", "callbacks-dropped"])
async def test_queue_time_does_not_count_against_grace_or_deadline(
    sim: Simulator, make_client: ClientFactory, callbacks: bool
) -> None:
    """40 edits through an 8-per-second window: the last ones queue for ~5 s, longer than
    both the visibility grace (1 s) and the deadline (3 s); every paid task still succeeds."""
    sim.config.create_limit = (4, 0.5)
    sim.config.invisible_for = 0.4  # each fresh task answers 422 "recordInfo is null" a while
    sim.config.latency = (0.2, 0.4)
    sim.config.callback_drop_rate = 1.0  # with callbacks on, only the safety polls can tell
    client = make_client(
        callbacks=callbacks,
        create_rate=4,
        create_period=0.5,
        visibility_grace=1.0,
        task_deadline=3.0,
        safety_poll_after=0.3,
        safety_poll_every=0.2,
    )
    results = await asyncio.gather(
        *(client.edit(request(n)) for n in range(40)), return_exceptions=True
    )
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    assert sim.stats.tasks_created == 40
    assert sim.stats.rate_limited == 0


async def test_a_429_storm_holding_the_queue_past_the_grace_loses_nothing(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """The client believes it may send fast; the service says 429 for seconds on end."""
    sim.config.create_limit = (3, 0.5)
    sim.config.retry_after = 0.3
    sim.config.invisible_for = 0.3
    sim.config.latency = (0.1, 0.2)
    client = make_client(
        create_attempts=100, visibility_grace=0.8, task_deadline=2.0, max_in_flight=30
    )
    results = await asyncio.gather(
        *(client.edit(request(n)) for n in range(24)), return_exceptions=True
    )
    assert [r for r in results if isinstance(r, BaseException)] == []
    assert sim.stats.rate_limited > 0  # it really was a storm
    assert sim.stats.tasks_created == 24


def _creating() -> int:
    """createTasks under way in tasks of their own."""
    return sum(1 for t in sdk_tasks() if "_create" in t.get_coro().__qualname__)  # type: ignore[union-attr]


@pytest.mark.parametrize("callbacks", [False, True], ids=["polling", "callbacks"])
async def test_edits_past_the_connection_limit_wait_without_a_task_each(
    sim: Simulator, make_client: ClientFactory, callbacks: bool
) -> None:
    """Thirty edits over two connections: the 28 that wait for one wait as a future each,
    not as a createTask task (and an aiohttp request) each, the objects the cyclic GC counts
    and scans for every parked edit; all go out in turn, none twice."""
    sim.config.create_answer_delay = 0.1
    client = make_client(callbacks=callbacks, connection_limit=2, max_in_flight=50)
    edits = [asyncio.create_task(client.edit(request(n))) for n in range(30)]
    await until(lambda: sim.stats.create_requests >= 2)
    most = 0
    while not all(e.done() for e in edits):
        most = max(most, _creating())
        await asyncio.sleep(0.01)
    assert most <= 2
    assert [e.exception() for e in edits] == [None] * 30
    assert sim.stats.create_requests == sim.stats.tasks_created == 30
    assert client.in_flight == 0


async def test_a_callers_session_sets_how_many_createtasks_go_out_at_once(
    sim: Simulator,
) -> None:
    """With the caller's session, its connector's limits count (the lower of ``limit`` and
    ``limit_per_host``), not ``connection_limit``."""
    sim.config.create_answer_delay = 0.1
    connector = aiohttp.TCPConnector(limit=10, limit_per_host=3)
    async with aiohttp.ClientSession(connector=connector) as session:
        client = SeedreamClient("k", base_url=sim.url, session=session, settings=FAST)
        edits = [asyncio.create_task(client.edit(request(n))) for n in range(12)]
        most = 0
        while not all(e.done() for e in edits):
            most = max(most, _creating())
            await asyncio.sleep(0.01)
        await client.aclose()
    assert most == 3
    assert [e.exception() for e in edits] == [None] * 12
    assert sim.stats.create_requests == 12


async def test_an_edit_waiting_for_a_connection_is_cancelled_or_closed_sending_nothing(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """Cancelled while it waits for its turn on the wire, an edit sends nothing and frees its
    place; the client closing gives the ones still waiting ``ClientClosed``, nothing sent."""
    sim.config.create_answer_delay = 0.3
    sim.config.latency = (5.0, 5.0)  # every task made stays in flight
    client = make_client(connection_limit=1, max_in_flight=10)
    edits = [asyncio.create_task(client.edit(request(n))) for n in range(4)]
    await until(lambda: sim.stats.create_requests == 1)
    await asyncio.sleep(0.02)
    edits[1].cancel()
    await until(lambda: sim.stats.create_requests == 2)  # the third, not the cancelled one
    await asyncio.sleep(0.02)
    assert client.in_flight == 3
    await client.aclose()
    await asyncio.gather(*edits, return_exceptions=True)
    assert edits[1].cancelled()
    assert isinstance(edits[3].exception(), ClientClosed)
    await asyncio.sleep(0.4)
    assert sim.stats.create_requests == 2
    assert sdk_tasks() == []


# --- §7: close is final ---------------------------------------------------------------------------


async def test_close_with_a_callers_session_sends_nothing_afterwards(sim: Simulator) -> None:
    """Two submissions wait for the createTask window when the client closes: neither is
    ever sent (the caller's session stays open), and each caller gets ClientClosed."""
    sim.config.latency = (5.0, 5.0)
    settings = attrs.evolve(FAST, create_rate=1, create_period=0.5)
    async with aiohttp.ClientSession() as session:
        client = SeedreamClient("k", base_url=sim.url, session=session, settings=settings)
        first = await client.submit(request(0))
        waiting = [asyncio.create_task(client.submit(request(n))) for n in (1, 2)]
        await asyncio.sleep(0.05)
        await client.aclose()
        polls_at_close = sim.stats.polls
        for task in waiting:
            with pytest.raises(ClientClosed):
                await task
        with pytest.raises(ClientClosed):
            await first.result()
        await asyncio.sleep(1.2)  # two more windows pass
        assert sim.stats.create_requests == 1
        assert sim.stats.polls == polls_at_close  # the poller never restarted after close
        assert not session.closed


async def test_close_during_start_leaves_nothing_open(sim: Simulator) -> None:
    receiver = CallbackReceiver()
    client = SeedreamClient("k", base_url=sim.url, callbacks=receiver, settings=FAST)
    opening = asyncio.create_task(client.__aenter__())
    await asyncio.sleep(0)  # the start is under way
    await client.aclose()
    with pytest.raises(ClientClosed):
        await opening
    assert not receiver.running
    with pytest.raises(ClientClosed):
        await client.credits()


def _busy_port() -> tuple[socket.socket, int]:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    return holder, holder.getsockname()[1]


async def test_a_receiver_that_cannot_bind_is_a_typed_error_and_leaks_nothing(
    sim: Simulator,
) -> None:
    holder, port = _busy_port()
    with holder:
        client = SeedreamClient(
            "k", base_url=sim.url, callbacks=CallbackReceiver(port=port), settings=FAST
        )
        with pytest.raises(ReceiverError, match="could not start"):
            await client.credits()
        # The session it made was closed (filterwarnings=error turns a leak into a failure),
        # and nothing half-open lets a second try get further.
        assert client._session is None or client._session.closed
        await client.aclose()


async def test_resume_whose_receiver_cannot_start_fails_instead_of_hanging(
    sim: Simulator,
) -> None:
    holder, port = _busy_port()
    with holder:
        settings = attrs.evolve(FAST, task_deadline=30.0)
        client = SeedreamClient(
            "k", base_url=sim.url, callbacks=CallbackReceiver(port=port), settings=settings
        )
        handle = client.resume("task_from_another_process")
        async with asyncio.timeout(5):
            with pytest.raises(ReceiverError):
                await handle.result()
        await client.aclose()


async def test_an_unexpected_exception_in_a_poll_fails_the_task_typed(sim: Simulator) -> None:
    """A user's trace hook that raises inside a poll: the task ends with a typed error at
    once (before, the poll task died unseen and ``result()`` hung forever)."""
    sim.config.latency = (0.3, 0.3)

    async def broken_hook(*_: object) -> None:
        if broken:
            raise RuntimeError("a bug in the caller's instrumentation")

    broken = False
    trace = aiohttp.TraceConfig()
    trace.on_request_start.append(broken_hook)
    async with (
        aiohttp.ClientSession(trace_configs=[trace]) as session,
        SeedreamClient("k", base_url=sim.url, session=session, settings=FAST) as client,
    ):
        handle = await client.submit(request(0))
        broken = True
        async with asyncio.timeout(5):
            with pytest.raises(ServerError, match="RuntimeError"):
                await handle.result()
        assert client.in_flight == 0  # its slot came back
        broken = False
        assert (await client.edit(request(1))).urls  # the poller still serves others


async def test_no_sdk_task_outlives_close(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.latency = (0.05, 0.3)
    client = make_client(callbacks=True)
    await asyncio.gather(*(client.edit(request(n)) for n in range(20)))
    pending = [asyncio.create_task(client.edit(request(n))) for n in range(20, 30)]
    await until(lambda: client.in_flight > 0)
    await client.aclose()
    await asyncio.gather(*pending, return_exceptions=True)
    await asyncio.sleep(0)
    assert sdk_tasks() == []


async def test_a_late_callback_after_a_lost_answer_expired_is_acknowledged(
    sim: Simulator, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the state machine: the task ended unknown, so its token was forgotten and the
    service's late callback, proof that the paid task exists, was answered 404."""
    sim.config.lost_answer_rate = 1.0
    sim.config.callback_delay = 0.8
    client = make_client(callbacks=True, task_deadline=0.3, safety_poll_after=10.0)
    with pytest.raises(SubmissionUnknown):
        await client.edit(request(0))
    (task_id,) = sim.tasks
    await until(lambda: sim.stats.callbacks_sent + sim.stats.callbacks_failed > 0)
    assert sim.stats.callbacks_sent == 1
    assert sim.stats.callbacks_failed == 0
    assert task_id in caplog.text  # the warning names the task that exists after all
