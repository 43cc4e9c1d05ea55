"""Awaiting edits end to end: callbacks with every fault, polling, slots, cancellation."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest
from yarl import URL

from seedream_async import (
    ClientClosed,
    EditResult,
    InvalidRequest,
    RequestRejected,
    SubmissionUnknown,
    TaskFailed,
    TaskState,
    TaskTimeout,
)
from seedream_async._lifecycle import Task
from seedream_async.simulator import Simulator
from tests.conftest import ClientFactory, request


def assert_real(result: EditResult, sim: Simulator) -> None:
    """The result is the one the simulator made for that task."""
    assert result.urls == sim.record(result.task_id).result_urls
    assert result.urls
    assert all(u.host == "127.0.0.1" for u in result.urls)
    assert result.record.state is TaskState.SUCCESS


def assert_paid_once(sim: Simulator) -> None:
    assert set(sim.stats.tasks_per_callback.values()) <= {1}
    assert set(sim.stats.tasks_per_request.values()) <= {1}


async def edit_all(make_client: ClientFactory, n: int, **kw: object) -> list[EditResult]:
    client = make_client(**kw)
    return await asyncio.gather(*(client.edit(request(i)) for i in range(n)))


async def test_polling_mode_respects_query_rate(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.latency = (0.05, 0.3)
    results = await edit_all(make_client, 40, query_rate=10, query_period=0.25)
    for r in results:
        assert_real(r, sim)
    assert sim.stats.polls >= 40
    assert sim.stats.peak_poll_rate(0.25) <= 10
    assert_paid_once(sim)


async def test_callbacks_resolve_without_polling(
    sim: Simulator, make_client: ClientFactory
) -> None:
    sim.config.latency = (0.01, 0.05)
    results = await edit_all(make_client, 30, callbacks=True, safety_poll_after=30.0)
    for r in results:
        assert_real(r, sim)
    assert sim.stats.callbacks_sent == 30
    assert sim.stats.polls == 0
    assert_paid_once(sim)


async def test_early_callbacks(sim: Simulator, make_client: ClientFactory) -> None:
    """The callback arrives before the createTask answer: the token finds its future."""
    sim.config.callback_early = True
    results = await edit_all(make_client, 20, callbacks=True, safety_poll_after=30.0)
    for r in results:
        assert_real(r, sim)
    assert sim.stats.polls == 0


@pytest.mark.parametrize(
    "knobs",
    [
        {"callback_duplicates": 2},
        {"callback_delay": 0.2},
        {"callback_old_schema": True},
        {"callback_drop_rate": 1.0},
        {"callback_drop_rate": 0.5, "callback_duplicates": 1, "callback_early": True},
    ],
    ids=["duplicated", "delayed", "old-schema", "dropped", "mixed"],
)
async def test_callback_faults(
    sim: Simulator, make_client: ClientFactory, knobs: dict[str, object]
) -> None:
    for name, value in knobs.items():
        setattr(sim.config, name, value)
    sim.config.latency = (0.01, 0.05)
    results = await edit_all(make_client, 20, callbacks=True)
    assert sorted(r.task_id for r in results) == sorted(sim.tasks)
    for r in results:
        assert_real(r, sim)
    assert sim.stats.callbacks_failed == 0  # duplicates are acknowledged, not refused
    assert_paid_once(sim)
    if knobs.get("callback_drop_rate") == 1.0:
        assert sim.stats.polls >= 20  # the safety net finished them


async def test_old_schema_credits(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.callback_old_schema = True
    (result,) = await edit_all(make_client, 1, callbacks=True, safety_poll_after=30.0)
    assert result.record.credits_consumed == sim.config.price


async def test_lost_create_answers_resolved_by_callback(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """createTask's answer is lost but the task was made: its callback resolves it."""
    sim.config.lost_answer_rate = 0.5
    sim.config.latency = (0.05, 0.1)
    results = await edit_all(make_client, 20, callbacks=True)
    for r in results:
        assert_real(r, sim)
    assert sim.stats.create_requests == sim.stats.tasks_created == 20
    assert_paid_once(sim)


async def test_lost_answer_in_polling_mode_is_unknown(
    sim: Simulator, make_client: ClientFactory
) -> None:
    sim.config.lost_answer_rate = 1.0
    client = make_client()
    with pytest.raises(SubmissionUnknown):
        await client.edit(request(0))
    assert sim.stats.tasks_created == 1
    assert client.in_flight == 0


async def test_lost_answer_and_no_callback_is_unknown_at_deadline(
    sim: Simulator, make_client: ClientFactory
) -> None:
    sim.config.lost_answer_rate = 1.0
    sim.config.callback_drop_rate = 1.0
    client = make_client(callbacks=True, task_deadline=0.3)
    with pytest.raises(SubmissionUnknown) as info:
        await client.edit(request(0))
    assert info.value.callback_url is not None
    assert sim.stats.tasks_created == 1
    assert client.in_flight == 0


@pytest.mark.parametrize("code", [404, 422])
async def test_fresh_task_not_visible_yet(
    sim: Simulator, make_client: ClientFactory, code: int
) -> None:
    sim.config.invisible_for = 0.3
    sim.config.invisible_code = code  # type: ignore[assignment]
    for r in await edit_all(make_client, 5):
        assert_real(r, sim)


async def test_invisible_past_grace_fails(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.invisible_for = 60.0
    with pytest.raises(RequestRejected, match="recordInfo is null"):
        await edit_all(make_client, 1, visibility_grace=0.2)


async def test_max_in_flight_across_coroutines(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.latency = (0.02, 0.08)
    client = make_client(callbacks=True, max_in_flight=5)
    seen: list[int] = []

    async def sample() -> None:
        while True:
            seen.append(client.in_flight)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(*(client.edit(request(i)) for i in range(40)))
    sampler.cancel()
    assert len(results) == 40
    assert max(seen) == 5
    assert client.in_flight == 0


@pytest.mark.parametrize("callbacks", [True, False])
async def test_failed_tasks(sim: Simulator, make_client: ClientFactory, callbacks: bool) -> None:
    sim.config.failure_rate = 1.0
    client = make_client(callbacks=callbacks)
    with pytest.raises(TaskFailed) as info:
        await client.edit(request(0))
    assert info.value.fail_code == "GENERATION_FAILED"
    assert info.value.task_id in sim.tasks
    assert client.in_flight == 0


async def test_deadline(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.latency = (30.0, 30.0)
    client = make_client(task_deadline=0.3)
    with pytest.raises(TaskTimeout) as info:
        await client.edit(request(0))
    assert isinstance(info.value, TimeoutError)
    assert info.value.task_id in sim.tasks
    assert client.in_flight == 0


async def test_waiters_that_give_up_never_touch_the_task(
    sim: Simulator, make_client: ClientFactory
) -> None:
    # One edit awaited by many coroutines: one is cancelled, forty time out (each leaves its
    # wait behind), three wait it out, a resumed handle and a late caller get it too.
    sim.config.latency = (0.4, 0.4)
    client = make_client(callbacks=True)
    handle = await client.submit(request(0))
    patient = [asyncio.create_task(handle.result()) for _ in range(2)]
    waiter = asyncio.create_task(handle.result())
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    for _ in range(40):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(handle.result(), 0.001)
    assert client.in_flight == 1
    patient.append(asyncio.create_task(client.resume(handle.task_id).result()))
    results = await asyncio.gather(*patient)
    assert {r.task_id for r in results} == {handle.task_id}
    assert_real(results[0], sim)
    late = await handle.result()  # already over: at once
    assert late.urls == results[0].urls
    assert client.in_flight == 0
    assert (await handle.record()).state is TaskState.SUCCESS


async def test_result_is_a_coroutine_wherever_asyncio_takes_one(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """``result()`` has no frame of its own (a parked edit keeps less), yet asyncio takes it as
    a coroutine: awaited, in ``create_task``, ``gather`` or a ``TaskGroup``; awaited once
    only; one never awaited asks nothing of the task; a failed task raises where awaited."""
    sim.config.latency = (0.2, 0.2)
    client = make_client(callbacks=True)
    handle = await client.submit(request(0))
    never = handle.result()
    assert asyncio.iscoroutine(never)
    assert "TaskHandle.result" in repr(never)
    never.close()
    assert handle._task.waiters is None  # nothing registered for a wait never begun
    async with asyncio.TaskGroup() as group:
        grouped = group.create_task(handle.result())
        gathered = asyncio.gather(handle.result(), handle.result())
        awaited = handle.result()
        first = await awaited
    assert [r.task_id for r in (grouped.result(), *await gathered, first)] == [handle.task_id] * 4
    with pytest.raises(RuntimeError, match="cannot reuse"):
        await awaited
    sim.config.failure_rate = 1.0
    failing = await client.submit(request(1))
    with pytest.raises(TaskFailed):
        await failing.result()
    with pytest.raises(TaskFailed):
        await asyncio.create_task(failing.result())  # already over: at once, as a task too
    assert client.in_flight == 0


async def test_result_takes_both_forms_of_throw(sim: Simulator, make_client: ClientFactory) -> None:
    """asyncio throws one exception into ``result()``; Python 3.12 deprecated passing on the
    three-argument form, which warned at every cancelled wait (with warnings as errors, the
    warning came out instead of the cancel). A caller's own three-argument throw still works,
    with its warning where Python gives one; neither touches the task."""
    sim.config.latency = (0.2, 0.2)
    client = make_client(callbacks=True)
    handle = await client.submit(request(0))
    modern = handle.result()
    modern.send(None)  # waiting now
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KeyError, match="one"):
            modern.throw(KeyError("one"))
    legacy = handle.result()
    legacy.send(None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the caller's choice of form
        with pytest.raises(KeyError, match="three"):
            legacy.throw(KeyError, KeyError("three"), None)
    with pytest.raises(RuntimeError, match="cannot reuse"):
        legacy.send(None)
    assert client.in_flight == 1
    assert (await handle.result()).task_id == handle.task_id


async def test_a_finished_edit_is_freed_at_once(sim: Simulator, make_client: ClientFactory) -> None:
    """Nothing keeps a finished task: it is freed by reference counting, at once.

    A schedule entry left behind for each finished task (lazy deletion) would keep thousands
    alive at once and free them in bursts, which is what makes the cyclic GC run often.
    """
    sim.config.latency = (0.01, 0.05)
    client = make_client(callbacks=True, safety_poll_after=30.0)
    handles = [await client.submit(request(i)) for i in range(20)]
    tasks = [h._task for h in handles]
    for h in handles:
        assert_real(await h.result(), sim)
    assert client.in_flight == 0
    del handles, h
    for task in tasks:  # only this test's list still refers to it
        assert gc.get_referrers(task) == [tasks]
    assert sim.stats.polls == 0


async def test_cancel_during_submit_keeps_tracking(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """Cancelled just as createTask goes out: the task is still tracked to its end."""
    sim.config.latency = (0.2, 0.2)
    client = make_client(callbacks=True)
    accepted = asyncio.Event()
    task_ids: list[str] = []

    def on_accepted(task: Task) -> None:
        task_ids.append(task.task_id or "")
        accepted.set()

    await client.__aenter__()
    submit = asyncio.create_task(
        client._tracker.submit(  # the internal seam batches use: it has the on_sent hook
            request(0),
            on_sent=lambda: submit.cancel(),  # noqa: PLW0108 (submit is bound later)
            on_accepted=on_accepted,
        )
    )
    with pytest.raises(asyncio.CancelledError):
        await submit
    await accepted.wait()
    assert task_ids == list(sim.tasks)
    assert client.in_flight == 1  # still counted: the task runs
    assert_real(await client.resume(task_ids[0]).result(), sim)
    assert client.in_flight == 0


async def test_an_owned_submission_cancelled_on_the_wire_is_still_tracked(
    sim: Simulator, make_client: ClientFactory
) -> None:
    """A batch never cancels an item once createTask went out, but a loop shutting down may:
    then the submission is kept as one whose answer was lost, and its callback still tells."""
    sim.config.latency = (0.2, 0.2)
    client = make_client(callbacks=True, task_deadline=1.0)
    await client.__aenter__()
    tracker = client._tracker
    submit = asyncio.create_task(
        tracker.submit(
            request(0),
            on_sent=lambda: submit.cancel(),  # noqa: PLW0108 (submit is bound later)
            owned=True,
        )
    )
    with pytest.raises(asyncio.CancelledError):
        await submit
    assert client.in_flight == 1  # not forgotten: its token is live
    [task] = tracker.lifecycle.live()
    try:
        record = await asyncio.wait_for(task.wait(), 5)
    except SubmissionUnknown:  # no callback by the deadline: the request never left
        assert sim.stats.tasks_created == 0
    else:  # it left, and its callback named the task
        assert record.task_id in sim.tasks
    assert sim.stats.create_requests <= 1  # never sent twice
    assert client.in_flight == 0


async def test_cancel_before_send_submits_nothing(
    sim: Simulator, make_client: ClientFactory
) -> None:
    client = make_client(create_rate=1, create_period=60.0)
    await client.submit(request(0))
    blocked = asyncio.create_task(client.submit(request(1)))
    await asyncio.sleep(0.05)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    assert sim.stats.create_requests == 1
    await asyncio.sleep(0.05)
    assert client.in_flight == 0


async def test_close_while_pending(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.latency = (30.0, 30.0)
    client = make_client(callbacks=True)
    handles = [await client.submit(request(i)) for i in range(3)]
    waiters = [asyncio.create_task(h.result()) for h in handles]
    await asyncio.sleep(0.01)
    await client.aclose()
    for w in waiters:
        with pytest.raises(ClientClosed):
            await w
    assert client.in_flight == 0


async def test_resume_from_another_client(sim: Simulator, make_client: ClientFactory) -> None:
    sim.config.latency = (0.1, 0.1)
    task_id = await make_client().create_task(request(0))
    other = make_client(callbacks=True)  # the other process
    result = await other.resume(task_id).result()
    assert_real(result, sim)
    assert result.request is None
    assert other.resume(task_id) is not None


async def test_edit_with_fields(sim: Simulator, make_client: ClientFactory) -> None:
    result = await make_client().edit(
        prompt="make it blue", image_urls=["https://img.example/a.png"], quality="high"
    )
    assert result.request is not None
    assert result.request.quality == "high"
    assert result.urls[0] == URL(str(result.urls[0]))


async def test_bad_token_refused_before_anything(
    sim: Simulator, make_client: ClientFactory
) -> None:
    client = make_client(callbacks=True)
    for token in ("short", "has spaces in it, sixteen+", "ü" * 20):
        with pytest.raises(InvalidRequest, match="token"):
            await client.reconcile(token, request(0))
        with pytest.raises(InvalidRequest, match="token"):
            client.resume("task_1", token=token)
    assert client.in_flight == 0
    assert sim.stats.create_requests == 0
