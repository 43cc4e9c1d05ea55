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
    ImageResolution,
    ImageSize,
    JobRequest,
    LocalImage,
    ModelSpec,
    OutputFormat,
    Quality,
    RedisCoordinator,
    Reply,
    Seedream5LiteEditRequest,
    Seedream5LiteRequest,
    Seedream5ProRequest,
    SeedreamClient,
    SeedreamV4EditRequest,
    SeedreamV4Request,
    Settings,
    TaskHandle,
    TaskRecord,
    TaskRequest,
    TextToImageRequest,
    typed_models,
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


async def typed_models_usage(client: SeedreamClient) -> None:
    v4 = SeedreamV4Request(prompt="p", image_size=ImageSize.LANDSCAPE_16_9, max_images=2)
    sizes: ImageSize = v4.image_size
    resolution: ImageResolution = v4.image_resolution
    edit = SeedreamV4EditRequest(prompt="p", image_urls=[Path("a.png")], extra_input={"x": 1})
    lite = Seedream5LiteEditRequest(prompt="ppp", image_urls=["https://a/b.png"])
    pro = Seedream5ProRequest(prompt="ppp", output_format=OutputFormat.JPEG)
    text = TextToImageRequest(prompt="p")
    job = JobRequest(model="any/model", input={"prompt": "p"})
    requests: list[TaskRequest] = [
        v4,
        edit,
        lite,
        pro,
        text,
        job,
        Seedream5LiteRequest(prompt="ppp"),
    ]
    result: EditResult = await client.generate(prompt="p", model="seedream/5-lite-text-to-image")
    handle: TaskHandle = await client.submit(job)
    async for item in client.edit_many(requests):
        model: str | None = item.request.model if item.request is not None else None
    specs: tuple[ModelSpec, ...] = typed_models()
    print(sizes, resolution, result, handle, model, specs, result.record.raw)
