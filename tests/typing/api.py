"""
A typing test of the public API: mypy --strict checks this file; it is never run.

If a public signature changes shape, this file stops type-checking.
"""

from __future__ import annotations

from pathlib import Path

from yarl import URL

from seedream_async import (
    AspectRatio,
    CallbackReceiver,
    Coordinator,
    EditRequest,
    EditResult,
    LocalImage,
    Quality,
    RedisCoordinator,
    Reply,
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
        reconciled: TaskHandle = await client.reconcile("t" * 24, request)
        uploaded: URL = await client.upload(Path("a.png"))
        from_bytes: URL = await client.upload(b"...", file_name="a.png")
        local: EditResult = await client.edit(prompt="p", image_urls=[Path("a.png")])
    images: tuple[LocalImage, ...] = request.local_images
    coordinator: Coordinator = RedisCoordinator("redis://127.0.0.1:6379/0", namespace="acct")
    async with SeedreamClient("key", coordinator=coordinator) as fleet_client:
        fleet_result: EditResult = await fleet_client.edit(request)
    receiver = CallbackReceiver()
    reply: Reply = await receiver.ahandle("POST", "token", b"{}", {"x-webhook-signature": ""})
    listening: URL | None = receiver.local_url
    del quality, ratio, record, balance, urls, again, resumed, reconciled, uploaded, from_bytes
    del local, images, fleet_result, reply, listening
