"""Issue 30: every Seedream model, typed, on one model-neutral core; any other by JobRequest."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from seedream_async import (
    EditRequest,
    InvalidRequest,
    JobRequest,
    JournalMismatch,
    RequestRejected,
    Seedream5LiteEditRequest,
    Seedream5LiteRequest,
    Seedream5ProRequest,
    SeedreamClient,
    SeedreamV4EditRequest,
    SeedreamV4Request,
    TaskRequest,
    TextToImageRequest,
    typed_models,
)
from seedream_async.simulator import Simulator, fake_png
from tests.conftest import FAST, ClientFactory

PNG = fake_png("input", 0, 256)
URL = "https://img.example/in.png"

#: One valid request per typed model (``image`` a local file, where the model takes images),
#: and how many images its result holds.
VALID: dict[str, tuple[Callable[[Path], TaskRequest], int]] = {
    "seedream/4.5-edit": (
        lambda image: EditRequest(prompt="make it blue", image_urls=[URL, image]),
        1,
    ),
    "seedream/4.5-text-to-image": (
        lambda _: TextToImageRequest(prompt="a blue cat", aspect_ratio="16:9", quality="high"),
        1,
    ),
    "seedream/5-lite-text-to-image": (
        lambda _: Seedream5LiteRequest(prompt="a blue cat", quality="high"),
        1,
    ),
    "seedream/5-lite-image-to-image": (
        lambda image: Seedream5LiteEditRequest(prompt="make it blue", image_urls=[image]),
        1,
    ),
    "seedream/5-pro-text-to-image": (
        lambda _: Seedream5ProRequest(prompt="a blue cat", output_format="jpeg"),
        1,
    ),
    "bytedance/seedream-v4-text-to-image": (
        lambda _: SeedreamV4Request(prompt="a blue cat", max_images=3, seed=7),
        3,
    ),
    "bytedance/seedream-v4-edit": (
        lambda image: SeedreamV4EditRequest(
            prompt="make it blue", image_urls=[image, URL], image_size="landscape_16_9"
        ),
        1,
    ),
}

#: Each documented limit: the model, its request's fields, and the field refused.
LIMITS: list[tuple[str, dict[str, Any], str]] = [
    ("seedream/4.5-edit", {"prompt": "x" * 3001, "image_urls": [URL]}, "prompt"),
    ("seedream/4.5-edit", {"prompt": "p", "image_urls": [URL] * 15}, "image_urls"),
    ("seedream/4.5-edit", {"prompt": "p", "image_urls": []}, "image_urls"),
    ("seedream/4.5-edit", {"prompt": "p", "image_urls": [URL], "aspect_ratio": "5:4"},
     "aspect_ratio"),
    ("seedream/4.5-edit", {"prompt": "p", "image_urls": [URL], "quality": "ultra"}, "quality"),
    ("seedream/4.5-text-to-image", {"prompt": "x" * 3001}, "prompt"),
    ("seedream/4.5-text-to-image", {"prompt": "p", "aspect_ratio": "5:4"}, "aspect_ratio"),
    ("seedream/4.5-text-to-image", {"prompt": "p", "quality": "4k"}, "quality"),
    ("seedream/4.5-text-to-image", {"prompt": "p", "nsfw_checker": "yes"}, "nsfw_checker"),
    ("seedream/5-lite-text-to-image", {"prompt": "ab"}, "prompt"),
    ("seedream/5-lite-text-to-image", {"prompt": "x" * 3001}, "prompt"),
    ("seedream/5-lite-text-to-image", {"prompt": "abc", "quality": "ultra"}, "quality"),
    ("seedream/5-lite-image-to-image", {"prompt": "ab", "image_urls": [URL]}, "prompt"),
    ("seedream/5-lite-image-to-image", {"prompt": "abc", "image_urls": [URL] * 15},
     "image_urls"),
    ("seedream/5-lite-image-to-image", {"prompt": "abc", "image_urls": ["ftp://x/y.png"]},
     "image_urls"),
    ("seedream/5-pro-text-to-image", {"prompt": "x" * 5001}, "prompt"),
    ("seedream/5-pro-text-to-image", {"prompt": "ab"}, "prompt"),
    ("seedream/5-pro-text-to-image", {"prompt": "abc", "output_format": "gif"},
     "output_format"),
    ("bytedance/seedream-v4-text-to-image", {"prompt": "x" * 5001}, "prompt"),
    ("bytedance/seedream-v4-text-to-image", {"prompt": "p", "image_size": "huge"},
     "image_size"),
    ("bytedance/seedream-v4-text-to-image", {"prompt": "p", "image_resolution": "8K"},
     "image_resolution"),
    ("bytedance/seedream-v4-text-to-image", {"prompt": "p", "max_images": 0}, "max_images"),
    ("bytedance/seedream-v4-text-to-image", {"prompt": "p", "max_images": 7}, "max_images"),
    ("bytedance/seedream-v4-text-to-image", {"prompt": "p", "seed": "7"}, "seed"),
    ("bytedance/seedream-v4-edit", {"prompt": "p", "image_urls": [URL] * 11}, "image_urls"),
    ("bytedance/seedream-v4-edit", {"prompt": "p", "image_urls": [URL], "max_images": 7},
     "max_images"),
]  # fmt: skip
SPECS = {spec.model: spec for spec in typed_models()}


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    path.write_bytes(PNG)
    return path


def test_every_typed_model_has_a_valid_row() -> None:
    assert set(VALID) == set(SPECS)
    assert {model for model, _, _ in LIMITS} == set(SPECS)


@pytest.mark.parametrize("callbacks", [True, False], ids=["callback", "polling"])
@pytest.mark.parametrize("model", list(VALID))
async def test_each_typed_model_round_trips(
    sim: Simulator, make_client: ClientFactory, image: Path, model: str, callbacks: bool
) -> None:
    build, images = VALID[model]
    request = build(image)
    assert request.model == model
    async with make_client(callbacks=callbacks) as client:
        result = await client.edit(request)
    assert result.record.model == model
    assert len(result.urls) == images == len(set(result.urls))
    assert result.request is request
    assert result.record.credits_consumed == sim.price_of(request)
    made = sim.tasks[result.task_id].request
    assert type(made) is type(request)
    assert made.model == model
    assert sim.stats.uploads == (1 if SPECS[model].takes_images else 0)
    assert not made.local_images  # what reached createTask: URLs only


@pytest.mark.parametrize(("model", "fields", "field"), LIMITS)
def test_each_documented_limit_is_refused_before_http(
    model: str, fields: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        SPECS[model].request(**fields)
    assert caught.value.field == field


@pytest.mark.parametrize(("model", "fields", "field"), LIMITS)
async def test_the_simulator_refuses_each_limit_as_the_service_would(
    sim: Simulator, make_client: ClientFactory, model: str, fields: dict[str, Any], field: str
) -> None:
    """The same table, sent raw (``JobRequest`` checks nothing of the model): a 422 naming
    the field, and no task made."""
    async with make_client() as client:
        with pytest.raises(RequestRejected) as caught:
            await client.submit(JobRequest(model=model, input=fields))
    assert caught.value.code == 422
    assert caught.value.message.startswith(f"{field}: ")
    assert sim.stats.tasks_created == 0


@pytest.mark.parametrize("model", list(VALID))
def test_extra_input_is_sent_as_is_and_may_not_shadow_a_field(model: str, image: Path) -> None:
    spec = SPECS[model]
    fields: dict[str, Any] = {"prompt": "make it blue"}
    if spec.takes_images:
        fields["image_urls"] = [URL]
    extra = {"watermark": False, "style": {"tone": ["warm", 2.5, None]}}
    make: Any = spec.request
    request = make(**fields, extra_input=extra)
    assert request.task_input()["style"] == extra["style"]
    assert request.task_input()["watermark"] is False
    assert request.fingerprint() != make(**fields).fingerprint()
    for bad, field in (
        ({"prompt": "again"}, "extra_input"),
        ({"x": float("nan")}, "extra_input.x"),
        ({"x": object()}, "extra_input.x"),
        ({"x": {"y": 2**70}}, "extra_input.x.y"),
        ({3: "x"}, "extra_input"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            make(**fields, extra_input=bad)
        assert caught.value.field == field


async def test_job_request_reaches_create_task_unchanged() -> None:
    """A model the SDK does not type: ``input`` byte for byte as given (the simulator does
    not offer it either, so it answers 422)."""
    bodies: list[bytes] = []

    @web.middleware
    async def keep(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path.endswith("/createTask"):
            bodies.append(await request.read())
        answer: web.StreamResponse = await handler(request)
        return answer

    sim = Simulator()
    sim.app.middlewares.append(keep)
    given = {
        "prompt": "déjà vu, \u2603",
        "reference_image_urls": ["https://img.example/a.png"],
        "layers": [1, 2.5, None, {"deep": True}],
        "big": 2**53 + 1,
    }
    async with sim, SeedreamClient("k", base_url=sim.url, settings=FAST) as client:
        with pytest.raises(RequestRejected) as caught:
            await client.submit(JobRequest(model="seedream/5-pro-reference-to-image", input=given))
    assert caught.value.message.startswith("model: ")
    (raw,) = bodies
    assert json.loads(raw)["model"] == "seedream/5-pro-reference-to-image"
    assert json.loads(raw)["input"] == given
    expected = json.dumps(given, separators=(",", ":"), ensure_ascii=False).encode()
    assert b'"input":' + expected in raw


def test_job_request_checks_json_and_size_only() -> None:
    JobRequest(model="any/new-model", input={"whatever": [1, {"a": None}]})
    for model, task_input, field in (
        ("", {}, "model"),
        ("a model", {}, "model"),
        ("m", {"x": float("inf")}, "input.x"),
        ("m", {"x": "y" * (1 << 20)}, "input"),
        ("m", ["not", "a", "mapping"], "input"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            JobRequest(model=model, input=task_input)  # type: ignore[arg-type]
        assert caught.value.field == field


async def test_several_images_are_kept_and_downloaded_by_index_and_number(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    requests = [SeedreamV4Request(prompt=f"cat {n}", max_images=n + 2) for n in range(2)]
    async with make_client() as client:
        items = [i async for i in client.edit_many(requests, download_to=tmp_path / "out")]
    assert sorted(len(i.files) for i in items) == [2, 3]
    names = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert names == [f"{i:06d}_{n}.png" for i, k in ((0, 2), (1, 3)) for n in range(k)]


async def test_fields_the_sdk_does_not_know_stay_reachable(
    sim: Simulator, make_client: ClientFactory
) -> None:
    def add(record: dict[str, Any]) -> None:
        record["watermarkId"] = "wm-1"

    sim.config.tamper = add
    async with make_client() as client:
        result = await client.generate(prompt="a cat")
    assert result.record.raw is not None
    assert result.record.raw["watermarkId"] == "wm-1"
    assert result.record.model == "seedream/4.5-text-to-image"


async def test_generate_takes_any_text_model_and_refuses_an_edit_one(
    sim: Simulator, make_client: ClientFactory
) -> None:
    async with make_client() as client:
        result = await client.generate(
            prompt="a cat", model="seedream/5-lite-text-to-image", quality="high"
        )
        assert result.record.model == "seedream/5-lite-text-to-image"
        for model, kwargs, field in (
            ("seedream/4.5-edit", {}, "model"),
            ("bytedance/seedream-v4-text-to-image", {"aspect_ratio": "1:1"}, "aspect_ratio"),
            ("no/such-model", {}, "model"),
        ):
            with pytest.raises(InvalidRequest) as caught:
                await client.generate(prompt="a cat", model=model, **kwargs)
            assert caught.value.field == field
    assert sim.stats.create_requests == 1


def test_edit_request_is_unchanged_without_extra_input() -> None:
    """The 4.5 edit's fingerprint is the one every journal so far holds."""
    request = EditRequest(prompt="legacy edit 1", image_urls=["https://img.example/legacy/1.png"])
    assert request.fingerprint() == (
        "6124643039228d97178ad1e672c99991dcb7be5c31beaf4a5a574628ef8c6189"
    )
    assert "extra_input" not in repr(request)


def mixed(image: Path, n: int) -> list[TaskRequest]:
    """``n`` inputs of three models, the edit ones with a local file."""
    made: list[TaskRequest] = []
    for k in range(n):
        if k % 3 == 0:
            made.append(EditRequest(prompt=f"edit {k}", image_urls=[image]))
        elif k % 3 == 1:
            made.append(Seedream5LiteEditRequest(prompt=f"edit {k}", image_urls=[image, URL]))
        else:
            made.append(SeedreamV4Request(prompt=f"draw {k}", max_images=2))
    return made


async def test_a_mixed_batch_resumes_from_its_journal_with_nothing_sent_again(
    sim: Simulator, make_client: ClientFactory, image: Path, tmp_path: Path
) -> None:
    journal = tmp_path / "j.sqlite"
    async with make_client() as client:
        first = [i async for i in client.edit_many(mixed(image, 9), journal=journal)]
        assert all(i.ok for i in first)
        models = {i.index: i.result.record.model for i in first if i.result is not None}
        assert models == {i: r.model for i, r in enumerate(mixed(image, 9))}
        made = sim.stats.tasks_created
        again = [i async for i in client.edit_many(mixed(image, 9), journal=journal)]
    assert all(i.ok and i.from_journal for i in again)
    assert sim.stats.tasks_created == made == 9
    assert sim.stats.uploads == 1  # one file, one upload, for every model that used it


async def test_the_journal_tells_models_apart(
    sim: Simulator, make_client: ClientFactory, tmp_path: Path
) -> None:
    """The same fields for another model are another input: a journal refuses the swap."""
    journal = tmp_path / "j.sqlite"
    fields: dict[str, Any] = {"prompt": "same words", "image_urls": [URL]}
    async with make_client() as client:
        [item] = [i async for i in client.edit_many([EditRequest(**fields)], journal=journal)]
        assert item.ok
        with pytest.raises(JournalMismatch):
            async for _ in client.edit_many([Seedream5LiteEditRequest(**fields)], journal=journal):
                pass
    assert sim.stats.tasks_created == 1
