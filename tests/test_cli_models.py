"""Issue 30 on the command line: ``--model``, ``"model"`` in a manifest, ``models``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from seedream_async import typed_models
from seedream_async.simulator import fake_png
from tests.test_cli import run


def write(path: Path, lines: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_models_lists_every_typed_model_with_its_rules(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run("models", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [m["model"] for m in listed] == [s.model for s in typed_models()]
    v4 = next(m for m in listed if m["model"] == "bytedance/seedream-v4-text-to-image")
    rules = {rule["name"]: rule for rule in v4["fields"]}
    assert rules["prompt"]["required"]
    assert rules["max_images"]["default"] == 1
    assert rules["max_images"]["limits"] == "1 to 6 result images"
    assert "landscape_21_9" in rules["image_size"]["choices"]
    assert run("models") == 0
    text = capsys.readouterr().out
    for spec in typed_models():
        assert f"{spec.model}  (" in text


def test_a_manifest_mixes_models_and_each_line_is_honoured(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.png").write_bytes(fake_png("in", 0, 256))
    manifest = write(
        tmp_path / "m.jsonl",
        [
            {"prompt": "make it blue", "image_urls": ["in.png"]},
            {"model": "seedream/5-lite-image-to-image", "prompt": "make it red",
             "image_urls": ["in.png"], "quality": "high"},
            {"model": "bytedance/seedream-v4-text-to-image", "prompt": "a cat", "max_images": 2},
        ],
    )  # fmt: skip
    out = tmp_path / "r.jsonl"
    assert run("batch", str(manifest), "--simulate", "--out", str(out), "-q", "--ordered") == 0
    lines = json_lines(out)
    assert [line["model"] for line in lines] == [
        "seedream/4.5-edit",
        "seedream/5-lite-image-to-image",
        "bytedance/seedream-v4-text-to-image",
    ]
    assert [len(line["urls"]) for line in lines] == [1, 1, 2]
    assert lines[1]["quality"] == "high"


def test_model_is_the_default_of_lines_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write(tmp_path / "t.jsonl", [{"prompt": "a dog"}, {"prompt": "a fox"}])
    out = tmp_path / "r.jsonl"
    assert run("batch", str(manifest), "--simulate", "--out", str(out), "-q") == 2
    assert "image_urls" in capsys.readouterr().err  # the default, 4.5 edit, needs images
    assert not out.exists()
    code = run(
        "batch", str(manifest), "--simulate", "--out", str(out), "-q",
        "--model", "seedream/5-pro-text-to-image",
    )  # fmt: skip
    assert code == 0
    assert {line["model"] for line in json_lines(out)} == {"seedream/5-pro-text-to-image"}


def json_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ({"model": "bytedance/seedream-v4-text-to-image", "prompt": "p", "max_image": 2},
         "'max_image' (did you mean 'max_images'?) for bytedance/seedream-v4-text-to-image"),
        ({"model": "seedream/5-lite-text-to-image", "prompt": "ab"},
         "seedream/5-lite-text-to-image: prompt 3 to 3000 characters"),
        ({"model": "seedream/5-lite-txt-to-image", "prompt": "abc"},
         "did you mean 'seedream/5-lite-text-to-image'?"),
        ({"model": "seedream/4.5-text-to-image", "prompt": "p", "image_urls": ["a.png"]},
         "'image_urls' for seedream/4.5-text-to-image"),
        ({"model": "bytedance/seedream-v4-edit", "prompt": "p", "image_urls": ["https://a/b"],
          "extra_input": {"seed": 1}}, "'seed' is a field of SeedreamV4EditRequest"),
    ],
)  # fmt: skip
def test_manifest_errors_name_the_model_s_own_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], line: dict[str, Any], expected: str
) -> None:
    manifest = write(tmp_path / "m.jsonl", [line])
    assert run("batch", str(manifest), "--simulate", "-q") == 2
    assert expected in capsys.readouterr().err


def test_edit_takes_a_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        "edit", "--simulate", "--model", "seedream/5-lite-text-to-image", "--prompt", "a cat"
    )
    assert code == 0
    assert len(json.loads(capsys.readouterr().out)["urls"]) == 1
    image = tmp_path / "in.png"
    image.write_bytes(fake_png("in", 0, 256))
    code = run(
        "edit", "--simulate", "--model", "bytedance/seedream-v4-edit", "--prompt", "blue",
        "--image", str(image),
    )  # fmt: skip
    assert code == 0
    capsys.readouterr()
    assert run("edit", "--simulate", "--model", "bytedance/seedream-v4-edit", "--prompt", "x") == 2
    assert "needs input images" in capsys.readouterr().err
    assert run("edit", "--simulate", "--model", "seedream/4.5-editt", "--prompt", "x") == 2
    assert "did you mean 'seedream/4.5-edit'?" in capsys.readouterr().err
