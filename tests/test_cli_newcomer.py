"""Newcomer friction in the CLI, each as a user first met it (issue 33)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import run


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
