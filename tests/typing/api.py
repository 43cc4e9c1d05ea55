"""
A typing test of the public API: mypy --strict checks this file; it is never run.

If a public signature changes shape, this file stops type-checking.
"""

from __future__ import annotations

from yarl import URL

from seedream_async import (
    AspectRatio,
    CallbackReceiver,
    EditRequest,
    EditResult,
    Quality,
    SeedreamClient,
    Settings,
    TaskHandle,
    TaskRecord,
)


async def typed_usage() -> None:
    request = EditRequest(
        prompt="p", image_urls=["https://a/b.png", URL("https://a/c.png")], aspect_ratio="4:3"
    )
    quality: Quality = request.quality
    ratio: AspectRatio = request.aspect_ratio
    async with SeedreamClient(
        "key",
        callbacks=CallbackReceiver(public_url="https://hooks.example"),
        settings=Settings(max_in_flight=10),
    ) as client:
        task_id: str = await client.create_task(request, callback_url="https://cb.example/x")
        record: TaskRecord = await client.get_task(task_id)
        balance: float = await client.credits()
        handle: TaskHandle = await client.submit(request)
        result: EditResult = await handle.result()
        urls: tuple[URL, ...] = result.urls
        again: EditResult = await client.edit(prompt="p", image_urls=["https://a/b.png"])
        resumed: TaskHandle = client.resume(handle.task_id)
    del quality, ratio, record, balance, urls, again, resumed
