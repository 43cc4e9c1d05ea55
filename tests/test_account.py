"""Account conditions (401, 402, 433, 455, an outage) hold back every createTask of a client."""

from __future__ import annotations

import asyncio

import pytest

from seedream_async import (
    AuthenticationError,
    EditResult,
    InsufficientCredits,
    ServiceUnavailable,
    SubmissionUnknown,
    UsageLimitExceeded,
)
from seedream_async.simulator import Simulator, SimulatorConfig
from tests.conftest import ClientFactory, request, until

#: One createTask on the wire at a time (each waits for the previous answer): what the
#: account's window does in its steady state, and what makes "how many more" exact.
ONE_AT_A_TIME = {"create_rate": 1, "create_period": 0.01}


async def edits(client: object, n: int) -> list[EditResult | BaseException]:
    edit = client.edit  # type: ignore[attr-defined]
    return list(await asyncio.gather(*(edit(request(i)) for i in range(n)), return_exceptions=True))


@pytest.fixture
def sim_config() -> SimulatorConfig:
    return SimulatorConfig(seed=5, credits=30.0, price=1.0)


async def test_no_credits_stops_every_send(sim: Simulator, make_client: ClientFactory) -> None:
    client = make_client(**ONE_AT_A_TIME)
    outcomes = await edits(client, 60)
    assert sum(isinstance(o, EditResult) for o in outcomes) == 30
    refused = [o for o in outcomes if not isinstance(o, EditResult)]
    assert len(refused) == 30
    assert all(isinstance(o, InsufficientCredits) for o in refused)
    assert sim.stats.create_requests <= 32
    # A new submission is refused at once, without sending anything.
    sent = sim.stats.create_requests
    with pytest.raises(InsufficientCredits, match="not sent"):
        await client.edit(request(99))
    assert sim.stats.create_requests == sent


async def test_a_top_up_is_noticed_by_the_recheck(
    sim: Simulator, make_client: ClientFactory
) -> None:
    client = make_client(credit_recheck=0.05, **ONE_AT_A_TIME)
    await edits(client, 31)
    assert sim.stats.create_refused[402] == 1
    sim.config.credits = 5.0
    await asyncio.sleep(0.06)  # past credit_recheck: the next submission asks the balance
    assert isinstance(await client.edit(request(100)), EditResult)


@pytest.mark.parametrize("sim_config", [SimulatorConfig(seed=5, usage_cap=5)])
async def test_a_usage_cap_stops_every_send(sim: Simulator, make_client: ClientFactory) -> None:
    outcomes = await edits(make_client(**ONE_AT_A_TIME), 20)
    assert sum(isinstance(o, EditResult) for o in outcomes) == 5
    assert sum(isinstance(o, UsageLimitExceeded) for o in outcomes) == 15
    assert sim.stats.create_requests <= 7


@pytest.mark.parametrize("sim_config", [SimulatorConfig(seed=5, revoke_key_after=10)])
async def test_a_revoked_key_stops_sends_and_polls(
    sim: Simulator, make_client: ClientFactory
) -> None:
    sim.config.latency = (0.3, 0.3)  # accepted tasks are still running when the key goes
    outcomes = await edits(make_client(**ONE_AT_A_TIME), 30)
    assert all(isinstance(o, AuthenticationError) for o in outcomes)
    assert sim.stats.create_requests <= 12
    polls = sim.stats.polls
    await asyncio.sleep(0.2)  # (several poll intervals of the test settings)
    assert sim.stats.polls == polls


@pytest.mark.parametrize(
    "sim_config", [SimulatorConfig(seed=5, maintenance_after=0.3, maintenance_for=1.0)]
)
async def test_maintenance_pauses_then_resumes(sim: Simulator, make_client: ClientFactory) -> None:
    client = make_client(create_rate=1, create_period=0.03)
    outcomes = await edits(client, 60)
    assert all(isinstance(o, EditResult) for o in outcomes), outcomes
    assert sim.stats.create_refused[455] <= 3


async def test_maintenance_past_patience_fails_unsent(
    sim: Simulator, make_client: ClientFactory
) -> None:
    sim.config.maintenance = True
    client = make_client(outage_patience=0.3, **ONE_AT_A_TIME)
    outcomes = await edits(client, 10)
    assert all(isinstance(o, ServiceUnavailable) for o in outcomes)
    assert sim.stats.create_requests == 1


async def test_an_outage_pauses_sends_until_the_service_answers(
    sim: Simulator, make_client: ClientFactory
) -> None:
    sim.config.html_error_rate = 1.0  # a proxy answers 502 for everything
    client = make_client(outage_after=3, **ONE_AT_A_TIME)
    running = asyncio.ensure_future(edits(client, 20))
    await until(lambda: sim.stats.create_requests >= 3)
    await asyncio.sleep(0.1)  # (probes go on, createTasks do not)
    assert sim.stats.create_requests == 3
    sim.config.html_error_rate = 0.0
    outcomes = await running
    assert sum(isinstance(o, SubmissionUnknown) for o in outcomes) == 3
    assert sum(isinstance(o, EditResult) for o in outcomes) == 17
