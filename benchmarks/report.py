"""
The contact sheet at scale: ``seedream-async report`` on a 10,000-line results file (every
input and output a local PNG, one in ten failed), cold (every thumbnail made) and warm
(thumbnails reused), then the first page opened in headless Chromium (to its load event).

Targets (issue 31): the report in under 30 s, the page open in under 3 s.

    python -m benchmarks.report [--lines 10000] [--keep DIR]
    python -m benchmarks.report --screenshot docs/report.png    # the README's picture
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from seedream_async.simulator import fake_png
from tests.browser import chromium

RATIOS = ("1:1", "4:3", "16:9", "3:4", "9:16")
PROMPTS = (
    "Turn the sky into a violet dusk",
    "Make it look like a watercolor painting",
    "Replace the background with a snowy forest",
    "Give the scene warm golden-hour light",
)


def make_results(folder: Path, lines: int, *, failed_every: int = 10) -> Path:
    """A results file of ``lines`` inputs, with their images on disk as a batch leaves them."""
    inputs, outputs = folder / "inputs", folder / "images"
    inputs.mkdir(parents=True)
    outputs.mkdir()
    start = time.time() - lines * 0.05
    with (folder / "results.jsonl").open("w") as f:
        for n in range(lines):
            ratio = RATIOS[n % len(RATIOS)]
            source = inputs / f"photo-{n:05d}.png"
            source.write_bytes(fake_png(f"in-{n}", 0, 3000, ratio))
            line: dict[str, Any] = {
                "index": n,
                "prompt": f"{PROMPTS[n % len(PROMPTS)]} (variant {n})",
                "inputs": [str(source)],
                "aspect_ratio": ratio,
                "quality": "basic",
                "model": "seedream/4.5-edit",
                "task_id": f"task_seedream_{1765172101886 + n}",
                "at": start + n * 0.05 + 0.4,
            }
            if n % failed_every == 3:
                line |= {"status": "failed", "fail_code": "GENERATION_FAILED"}
                line |= {"fail_msg": "simulated failure"}
            else:
                result = outputs / f"{n:06d}_0.png"
                result.write_bytes(fake_png(f"out-{n}", 0, 6000, ratio))
                line |= {"status": "succeeded", "credits": 1.25, "files": [str(result)]}
                line["urls"] = [f"https://tempfile.example/{n}.png"]
            f.write(json.dumps(line) + "\n")
    return folder / "results.jsonl"


def timed_report(results: Path, out: Path) -> float:
    """Seconds one ``seedream-async report`` process takes, start to exit."""
    argv = [sys.executable, "-m", "seedream_async.cli", "report", str(results), "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - started


async def timed_open(page: Path, rounds: int = 3) -> list[float]:
    """Seconds from navigation to the load event, a fresh tab's worth, ``rounds`` times."""
    seconds = []
    async with chromium() as tab:
        for _ in range(rounds):
            started = time.perf_counter()
            await tab.open(page.as_uri())
            seconds.append(time.perf_counter() - started)
            cards = await tab.evaluate("document.querySelectorAll('article.card').length")
            assert cards == 500, cards
            await tab.open("about:blank")
    return seconds


def big_thumbnails(folder: Path, count: int = 60) -> float:
    """Milliseconds per thumbnail of a 2048x2048 PNG that compresses like a photo (a
    result's real size; the simulator's images are 64 pixels), cold, on every core."""
    from PIL import Image  # noqa: PLC0415 (the report extra, as the command needs)

    folder.mkdir()
    fractal = Image.effect_mandelbrot((2048, 2048), (-2, -1.5, 1, 1.5), 100).convert("RGB")
    photo = Image.blend(fractal, Image.effect_noise((2048, 2048), 40).convert("RGB"), 0.3)
    photo.save(folder / "0.png")
    with (folder / "results.jsonl").open("w") as f:
        for n in range(count):
            if n:
                (folder / f"{n}.png").write_bytes((folder / "0.png").read_bytes())
            line = {"index": n, "status": "succeeded", "files": [str(folder / f"{n}.png")]}
            f.write(json.dumps(line) + "\n")
    return timed_report(folder / "results.jsonl", folder / "report.html") / count * 1000


def benchmark(folder: Path, lines: int) -> dict[str, Any]:
    results = make_results(folder, lines)
    out = folder / "report.html"
    cold = timed_report(results, out)
    warm = timed_report(results, out)
    pages = sorted(folder.glob("report*.html"))
    thumbs = list((folder / "report_files").iterdir())
    opened = asyncio.run(timed_open(out))
    return {
        "lines": lines,
        "report_cold_s": round(cold, 2),
        "report_warm_s": round(warm, 2),
        "pages": len(pages),
        "page_kib": round(out.stat().st_size / 1024, 1),
        "thumbnails": len(thumbs),
        "thumbnail_kib_mean": round(sum(t.stat().st_size for t in thumbs) / len(thumbs) / 1024, 2),
        "open_s": [round(s, 3) for s in opened],
        "thumbnail_2k_png_ms": round(big_thumbnails(folder / "big"), 1),
    }


def screenshot(target: Path) -> None:
    """The README's picture: a small report (eight inputs, two failed), as Chromium draws it."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = make_results(folder, 8, failed_every=4)
        lines = [json.loads(x) for x in results.read_text().splitlines()]
        first = lines[0]["at"]
        for n, line in enumerate(lines):
            line["at"] = first + 2.0 + n * 0.9 + (n % 3) * 0.4
            line["completed"] = datetime.fromtimestamp(line["at"], UTC).isoformat()
            took = 4.0 + (n * 7 % 5) * 0.6
            line["created"] = datetime.fromtimestamp(line["at"] - took, UTC).isoformat()
        results.write_text("".join(json.dumps(x) + "\n" for x in lines))
        timed_report(results, folder / "report.html")

        async def shoot() -> None:
            async with chromium(width=1180, height=760) as tab:
                await tab.open((folder / "report.html").as_uri())
                await tab.evaluate(
                    "Promise.all([...document.images].map(i => (i.loading = 'eager', i.decode())))"
                )
                await tab.screenshot(target)

        asyncio.run(shoot())
    print(f"{target}: {target.stat().st_size / 1024:.0f} KiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--lines", type=int, default=10_000)
    parser.add_argument("--keep", type=Path, help="build in this (empty) folder and keep it")
    parser.add_argument("--screenshot", type=Path, help="only write the README's screenshot")
    args = parser.parse_args()
    if args.screenshot:
        screenshot(args.screenshot)
        return
    if args.keep:
        figures = benchmark(args.keep, args.lines)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            figures = benchmark(Path(tmp), args.lines)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
