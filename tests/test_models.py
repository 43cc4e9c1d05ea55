"""EditRequest validation and the value types."""

from __future__ import annotations

import attrs
import pytest
from yarl import URL

from seedream_async import AspectRatio, EditRequest, InvalidRequest, Quality, TaskState

URLS = ["https://img.example/a.png"]


def test_defaults_and_plain_strings() -> None:
    req = EditRequest(prompt="p", image_urls=URLS, aspect_ratio="16:9", quality="high")
    assert req.aspect_ratio is AspectRatio.LANDSCAPE_16_9
    assert req.quality is Quality.HIGH
    assert req.image_urls == (URL(URLS[0]),)
    assert EditRequest(prompt="p", image_urls=URLS).aspect_ratio is AspectRatio.SQUARE


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 3001}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"prompt": "half a pair: \ud83d"}, "prompt"),  # no UTF-8 can carry it
        ({"image_urls": []}, "image_urls"),
        ({"image_urls": [f"https://a/{i}.png" for i in range(15)]}, "image_urls"),
        ({"image_urls": ["ftp://a/b.png"]}, "image_urls"),
        ({"image_urls": ["/relative.png"]}, "image_urls"),
        ({"image_urls": "https://a/b.png"}, "image_urls"),
        ({"image_urls": ["http://[::1"]}, "image_urls"),
        ({"aspect_ratio": "5:4"}, "aspect_ratio"),
        ({"quality": "ultra"}, "quality"),
        ({"nsfw_checker": "yes"}, "nsfw_checker"),
    ],
)
def test_invalid_fields_are_named(kwargs: dict[str, object], field: str) -> None:
    args: dict[str, object] = {"prompt": "p", "image_urls": URLS, **kwargs}
    with pytest.raises(InvalidRequest) as info:
        EditRequest(**args)  # type: ignore[arg-type]
    assert info.value.field == field
    assert isinstance(info.value, ValueError)


def test_limits_are_inclusive() -> None:
    many = [f"https://a/{i}.png" for i in range(14)]
    assert len(EditRequest(prompt="x" * 3000, image_urls=many).image_urls) == 14


def test_a_fingerprint_never_changes_across_versions() -> None:
    """Journals of earlier runs match inputs by it: these digests were made by release code."""
    plain = EditRequest(prompt="p", image_urls=["https://a.example/x.png"])
    odd = EditRequest(
        prompt="Make it blue — ünïcode",
        image_urls=["https://img.example/a%20b.png", "https://Img.Example/x/../y.png?q=1"],
        aspect_ratio="16:9",
        quality="high",
        nsfw_checker=False,
    )
    assert plain.fingerprint() == "4cde0b5c47c254cade55c317238da3b7e0fdee9b7e3385b7c08c6eef1dcaba3d"
    assert odd.fingerprint() == "0753d91b15e709bea47551ffeff03df4a75945b74baf47ecc1e5e0e57d9fa25f"


def test_frozen_and_fingerprint_stable() -> None:
    a = EditRequest(prompt="p", image_urls=URLS)
    b = EditRequest(prompt="p", image_urls=[URL(URLS[0])], aspect_ratio=AspectRatio.SQUARE)
    assert a == b
    assert a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != attrs.evolve(a, prompt="q").fingerprint()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        a.prompt = "q"  # type: ignore[misc]


def test_unknown_state_is_pending() -> None:
    assert TaskState.parse("teleporting") is TaskState.UNKNOWN
    assert not TaskState.UNKNOWN.is_final
    assert TaskState.parse("fail").is_final
