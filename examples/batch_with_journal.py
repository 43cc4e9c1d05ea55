"""
A batch: every line of a JSONL manifest edited, results saved, safe to kill and rerun.

    python -m seedream_async.simulator --port 8080 &          # or a real key, no base URL
    APIKLEY_API_KEY=demo APIKLEY_BASE_URL=http://127.0.0.1:8080 \
        python examples/batch_with_journal.py examples/manifest.jsonl out/

Kill it at any moment and run the same command again: the journal (``out/journal.sqlite``)
makes the rerun skip finished inputs, re-attach to accepted tasks and never pay twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

from yarl import URL

from seedream_async import BatchProgress, EditRequest, SeedreamClient, Settings


def read_manifest(path: Path) -> Iterator[EditRequest]:
    """One ``EditRequest`` per line, read lazily (a million lines cost no memory)."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield EditRequest(**json.loads(line))


async def run(manifest: Path, out: Path, *, simulator: bool) -> int:
    # The simulator serves its result images on loopback, which downloads refuse by default.
    settings = Settings(allow_private_downloads=simulator)
    progress = BatchProgress()
    failed = 0
    async with SeedreamClient(settings=settings) as client:
        async for item in client.edit_many(
            read_manifest(manifest),
            journal=out / "journal.sqlite",
            download_to=out / "images",
            progress=progress,
        ):
            failed += not item.ok
            files = ", ".join(str(f) for f in item.files) or "-"
            print(f"{item.index:>5} {item.status:<16} {files}")
    print(f"{progress.succeeded} succeeded, {failed} not; {progress.credits:g} credits")
    return 1 if failed else 0


def main() -> None:
    parser = argparse.ArgumentParser(description="Edit every line of a manifest.")
    parser.add_argument("manifest", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    # The SDK reads $APIKLEY_BASE_URL (and $APIKLEY_API_KEY) itself; a loopback one is a simulator.
    simulator = URL(os.environ.get("APIKLEY_BASE_URL", "https://x.invalid")).host == "127.0.0.1"
    raise SystemExit(asyncio.run(run(args.manifest, args.out, simulator=simulator)))


if __name__ == "__main__":
    main()
