"""The report of a simulated batch, rendered in a real headless Chromium."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from seedream_async.simulator import fake_png
from tests.browser import chromium
from tests.test_cli import _simulator

#: The DOM facts the test checks, read after every lazy thumbnail was made to load.
INSPECT = """(async () => {
  const images = [...document.images];
  const lazy = images.filter(i => i.getAttribute('loading') === 'lazy').length;
  images.forEach(i => { i.loading = 'eager'; });
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return {
    cards: [...document.querySelectorAll('article.card')].map(c => c.dataset.status),
    lazy: lazy,
    widths: images.map(i => i.naturalWidth),
    sources: images.map(i => i.src),
    scripts: document.scripts.length,
    prompts: [...document.querySelectorAll('.prompt')].map(p => p.textContent),
    failures: [...document.querySelectorAll('.err')].map(p => p.textContent),
  };
})()"""

PROMPT = "<script>document.title='owned'</script> make it {n}"


def manifest_of_local_images(folder: Path, count: int) -> Path:
    folder.mkdir()
    lines = []
    for n in range(count):
        (folder / f"in{n:02d}.png").write_bytes(fake_png(f"input-{n}", 0, 1000, "4:3"))
        edit = {"prompt": PROMPT.format(n=n), "image_urls": [f"in{n:02d}.png"]}
        lines.append(json.dumps(edit | {"aspect_ratio": "4:3"}))
    manifest = folder / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def run_batch(tmp_path: Path, url: str, manifest: Path) -> list[dict[str, Any]]:
    env = os.environ | {"APIKLEY_API_KEY": "k", "SEEDREAM_ALLOW_PRIVATE_DOWNLOADS": "1"}
    argv = [sys.executable, "-m", "seedream_async.cli", "batch", str(manifest), "--base-url", url]
    argv += ["--out", str(tmp_path / "results.jsonl"), "--download-to", str(tmp_path / "out")]
    argv += ["--report", str(tmp_path / "report.html"), "--create-rate", "1000/1", "-q"]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 1, done.stderr  # some failed, on purpose
    return [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_report_of_a_60_input_batch_renders_offline_in_chromium(
    tmp_path: Path, chromium_binary: str
) -> None:
    manifest = manifest_of_local_images(tmp_path / "inputs", 60)
    knobs = ("--failure-rate", "0.3", "--latency", "0.05", "0.3", "--no-create-limit")
    sim, url = _simulator(*knobs, "--seed", "11")
    try:
        results = run_batch(tmp_path, url, manifest)
    finally:
        sim.terminate()
        sim.communicate(timeout=10)
    failed = sum(r["status"] == "failed" for r in results)
    assert 0 < failed < 60
    codes = {r.get("fail_code") for r in results if r["status"] == "failed"}
    assert codes == {"GENERATION_FAILED"}
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    seen, requested = asyncio.run(_render(page, shot))
    assert seen["cards"] == ["failed"] * failed + ["succeeded"] * (60 - failed)
    assert len(seen["widths"]) == 60 + (60 - failed)  # every input, every result image
    assert all(width > 0 for width in seen["widths"])
    assert seen["lazy"] == len(seen["widths"])
    assert seen["scripts"] == 0  # the prompt's <script> is text, never run
    assert sorted(seen["prompts"]) == sorted(PROMPT.format(n=n) for n in range(60))
    assert all("GENERATION_FAILED: simulated failure" in f for f in seen["failures"])
    assert len(seen["failures"]) == failed
    assert requested
    assert all(u.startswith("file://") for u in requested), requested  # nothing left the machine
    assert all(s.startswith(page.parent.as_uri()) for s in seen["sources"])
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


async def _render(page: Path, shot: Path) -> tuple[dict[str, Any], list[str]]:
    async with chromium() as tab:
        await tab.open(page.as_uri())
        seen = await tab.evaluate(INSPECT)
        await tab.screenshot(shot)
        assert await tab.evaluate("document.title") == "seedream batch"
        return seen, tab.requested()
