"""Newcomer friction in the CLI, each as a user first met it (issue 33)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import run, small_manifest
from tests.test_uploads import image


def test_a_manifest_line_reports_every_fields_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    line = {"prompt": "", "image_urls": [], "aspect_ratio": "5:4", "qualty": "high"}
    manifest.write_text(json.dumps(line) + "\n")
    assert run("batch", str(manifest), "--simulate") == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert ":1: " in err
    for part in ("'qualty' (did you mean 'quality'?)", "prompt:", "image_urls:", "aspect_ratio:"):
        assert part in err


def test_a_missing_field_is_named_with_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"image_urls": ["https://a.example/b.png"], "quality": "4k"}))
    assert run("batch", str(manifest), "--simulate") == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "prompt: missing" in err
    assert "quality:" in err


def test_a_bad_choice_is_one_useful_line(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["edit", "--simulate", "--prompt", "p", "--image", "https://a.example/b.png"]
    assert run(*argv, "--aspect-ratio", "5:4") == 2
    (err,) = capsys.readouterr().err.strip().splitlines()
    assert "--aspect-ratio" in err
    assert "'5:4'" in err
    assert "16:9" in err  # what would do
    assert "--help" in err  # where the rest is
    assert not err.startswith("usage:")


def test_the_progress_bar_shows_uploads_only_when_there_are_some(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = small_manifest(tmp_path / "m.jsonl", 2)  # image URLs only
    assert run("batch", str(manifest), "--simulate", "--out", str(tmp_path / "r.jsonl")) == 0
    bar = capsys.readouterr().err
    assert "editing" in bar
    assert "uploads" not in bar
    for n in range(2):
        image(tmp_path / "photos" / f"{n}.png", seed=n)
    out = str(tmp_path / "p.jsonl")
    assert run("batch", "--images", str(tmp_path / "photos"), "--prompt", "p", "--simulate",
               "--out", out) == 0  # fmt: skip
    assert "uploads 2" in capsys.readouterr().err
