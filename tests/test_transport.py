"""The never-pay-twice retry policy and the shared rate limits, against the simulator."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from seedream_async import (
    AuthenticationError,
    InsufficientCredits,
    NotFound,
    RequestRejected,
    SeedreamClient,
    ServerError,
    ServiceUnavailable,
    SubmissionUnknown,
    TaskState,
)
from seedream_async.simulator import Simulator, SimulatorConfig
from tests.conftest import FAST, ClientFactory, request, until


async def test_create_and_get(sim: Simulator, make_client: ClientFactory) -> None:
    client = make_client()
    task_id = await client.create_task(request(1))
    record = await client.get_task(task_id)
    assert record.task_id == task_id
    assert record.state is TaskState.SUCCESS
    assert sim.stats.tasks_created == 1
    assert await client.credits() == 1e6


async def test_create_with_callback_url(sim: Simulator, make_client: ClientFactory) -> None:
    client = make_client()
    await client.create_task(request(1), callback_url="http://127.0.0.1:9/cb/tok")
    assert sim.stats.tasks_per_callback["http://127.0.0.1:9/cb/tok"] == 1


@pytest.mark.parametrize("mode", ["reset", "http500", "hang"])
async def test_lost_answer_is_unknown_and_not_resubmitted(
    sim: Simulator, make_client: ClientFactory, mode: str
) -> None:
    sim.config.lost_answer_rate = 1.0
    sim.config.lost_answer_mode = mode  # type: ignore[assignment]
    client = make_client(request_timeout=0.3)
    with pytest.raises(SubmissionUnknown) as info:
        await client.create_task(request(1))
    assert info.value.request == request(1)
    assert sim.stats.tasks_created == 1
    assert sim.stats.create_requests == 1


async def test_waiting_too_long_for_a_pooled_connection_sent_nothing(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """A createTask that timed out waiting for a free connection never left: it is sent
    when a connection frees, not taken for a lost answer (which would wait for a callback
    that cannot come, until the task's deadline)."""
    sim.config.lost_answer_rate = 1.0
    sim.config.lost_answer_mode = "hang"  # the first createTask holds the only connection
    client = make_client(
        connection_limit=1, connect_timeout=0.2, request_timeout=1.0, backoff_initial=0.2
    )
    first = asyncio.create_task(client.create_task(request(1)))
    await until(lambda: sim.stats.tasks_created == 1)
    sim.config.lost_answer_rate = 0.0
    second = await client.create_task(request(2))  # queued for the connection meanwhile
    assert second in sim.tasks
    with pytest.raises(SubmissionUnknown):
        await first  # it was sent: its answer is the one lost
    assert sim.stats.tasks_created == 2  # nothing paid twice
    assert sim.stats.create_requests == 2


async def test_opt_in_resubmits_unknown(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.lost_answer_rate = 1.0
    sim.config.lost_answer_mode = "http500"
    client = make_client(resubmit_unknown=True, create_attempts=3)
    with pytest.raises(SubmissionUnknown):
        await client.create_task(request(1))
    assert sim.stats.tasks_created == 3  # the caller asked to risk paying again


async def test_html_502_on_create_is_unknown(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.html_error_rate = 1.0
    with pytest.raises(SubmissionUnknown) as info:
        await make_client().create_task(request(1))
    assert isinstance(info.value.__cause__, ServerError)
    assert sim.stats.create_requests == 1


async def test_cloudflare_403_is_a_refusal_not_unknown(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """A proxy's 403 page means the request never reached the service: nothing was made."""
    sim.config.html_error_rate = 1.0
    sim.config.html_error_status = 403
    with pytest.raises(ServerError) as info:
        await make_client().create_task(request(1))
    assert info.value.http_status == 403
    assert "1010" in info.value.message
    assert sim.stats.tasks_created == 0


async def test_reads_retry_5xx(sim: Simulator, make_client: ClientFactory) -> None:
    client = make_client(query_attempts=30)
    task_id = await client.create_task(request(1))
    sim.config.html_error_rate = 0.5
    assert (await client.get_task(task_id)).task_id == task_id
    assert await client.credits() > 0
    sim.config.html_error_rate = 1.0
    with pytest.raises(ServerError) as info:
        await make_client(query_attempts=2).get_task(task_id)
    assert info.value.http_status == 502


@pytest.mark.parametrize(
    ("knob", "value", "error"),
    [
        ("maintenance", True, ServiceUnavailable),
        ("credits", 0.5, InsufficientCredits),
        ("api_key", "another-key", AuthenticationError),
    ],
)
async def test_business_errors(
    sim: Simulator, make_client: ClientFactory, knob: str, value: object, error: type[Exception]
) -> None:
    setattr(sim.config, knob, value)
    with pytest.raises(error):
        await make_client().create_task(request(1))
    assert sim.stats.tasks_created == 0


async def test_unknown_task_is_not_found(make_client: ClientFactory) -> None:
    with pytest.raises(NotFound):
        await make_client().get_task("task_nope")


async def test_invisible_fresh_task(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.invisible_for = 10.0
    client = make_client()
    task_id = await client.create_task(request(1))
    with pytest.raises(RequestRejected, match="recordInfo is null"):
        await client.get_task(task_id)


async def test_connection_refused_is_retried_safely() -> None:
    """A connection that never opened sent nothing: createTask is retried."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sim = Simulator(SimulatorConfig())
    async with SeedreamClient(
        "k",
        base_url=f"http://127.0.0.1:{port}",
        settings=FAST.__class__(
            backoff_initial=0.05, backoff_max=0.1, create_attempts=20, connect_attempts=20
        ),
    ) as client:
        create = asyncio.create_task(client.create_task(request(1)))
        await asyncio.sleep(0.15)
        assert not create.done()
        await sim.start(port=port)
        try:
            assert (await create).startswith("task_seedream_")
        finally:
            await sim.aclose()
    assert sim.stats.tasks_created == 1


async def test_nothing_listening_is_server_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = FAST.__class__(backoff_initial=0.01, create_attempts=2, query_attempts=2)
    async with SeedreamClient("k", base_url=f"http://127.0.0.1:{port}", settings=settings) as c:
        with pytest.raises(ServerError, match="network failure"):
            await c.create_task(request(1))
        with pytest.raises(ServerError, match="network failure"):
            await c.credits()


async def test_burst_at_full_rate_without_429(sim: Simulator, make_client: ClientFactory) -> None:
    """Client and simulator enforce the same window: all go through, none is refused."""
    sim.config.create_limit = (10, 0.25)
    client = make_client(create_rate=10, create_period=0.25)
    started = time.monotonic()
    ids = await asyncio.gather(*(client.create_task(request(i)) for i in range(40)))
    elapsed = time.monotonic() - started
    assert len(set(ids)) == 40
    assert sim.stats.rate_limited == 0
    assert sim.stats.tasks_created == 40
    assert elapsed >= 0.74  # 40 at 10 per 0.25 s needs three full windows after the first


@pytest.mark.parametrize("retry_after", [None, 0.1])
async def test_429_pauses_pipeline_and_pays_once(
    sim: Simulator, make_client: ClientFactory, retry_after: float | None
) -> None:
    """A stricter service than the client thinks: 429s are retried, each input paid once."""
    sim.config.create_limit = (5, 0.2)
    sim.config.retry_after = retry_after
    client = make_client(create_rate=100, create_period=0.2, create_attempts=50)
    await asyncio.gather(*(client.create_task(request(i)) for i in range(20)))
    assert sim.stats.rate_limited > 0
    assert sim.stats.tasks_created == 20
    assert set(sim.stats.tasks_per_request.values()) == {1}


async def test_poll_rate_limit_is_shared(sim: Simulator, make_client: ClientFactory) -> None:
    client = make_client(query_rate=5, query_period=0.2)
    task_id = await client.create_task(request(0))
    sim.stats.poll_times.clear()
    await asyncio.gather(*(client.get_task(task_id) for _ in range(20)))
    assert sim.stats.peak_poll_rate(0.2) <= 5
