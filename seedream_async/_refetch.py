"""
``seedream-async download``: the result images of an earlier run, fetched after the fact.

Result URLs expire about a day after the task ends, so a batch run without
``--download-to`` (or whose files were since lost) is saved only by fetching soon. Each
input is fetched with the batch's own ``Downloader`` (its SSRF guard, atomic writes and
owner files, under the batch's names), and judged on its own: a result older than a day
whose fetch is refused is reported ``expired``, not as one failure of the whole run.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import attrs
from yarl import URL

from ._downloads import Downloader
from ._errors import DownloadError

#: Seconds after which a result URL is expected to be gone (the vendor's "about a day").
EXPIRES_AFTER = 24 * 3600.0
#: Inputs fetched at once (each of them fetches its images through the downloader's slots).
CONCURRENCY = 16
_WITH_RESULT = frozenset(("succeeded", "download_failed"))


class Outcome:
    """What ``download`` did for one input."""

    DOWNLOADED = "downloaded"
    PRESENT = "present"
    EXPIRED = "expired"
    FAILED = "failed"
    NO_RESULT = "no result"


@attrs.frozen(kw_only=True)
class Fetched:
    """One input's outcome, its files, and the reason it failed (when it did)."""

    index: object
    outcome: str
    files: tuple[Path, ...] = ()
    reason: str | None = None
    #: Seconds since its task ended, when the line says.
    age: float | None = None


def result_age(line: Mapping[str, Any], now: float) -> float | None:
    """Seconds since the line's task completed (else since the line was written)."""
    completed = line.get("completed")
    if isinstance(completed, str):
        try:
            return now - datetime.fromisoformat(completed).timestamp()
        except ValueError:
            pass
    at = line.get("at")
    if isinstance(at, int | float) and not isinstance(at, bool):
        return now - float(at)
    return None


def _urls(line: Mapping[str, Any]) -> tuple[URL, ...]:
    raw = line.get("urls")
    if not isinstance(raw, list):
        return ()
    urls = []
    for value in raw:
        if isinstance(value, str):
            try:
                urls.append(URL(value))
            except (ValueError, TypeError):
                urls.append(URL())  # the downloader refuses it, per input
    return tuple(urls)


def _present(line: Mapping[str, Any], base: Path) -> tuple[Path, ...] | None:
    """The line's files when every one of them is still there, else None."""
    files = line.get("files")
    if not isinstance(files, list) or not files or not all(isinstance(f, str) for f in files):
        return None
    paths = tuple(Path(f) if Path(f).is_absolute() or Path(f).exists() else base / f for f in files)
    return paths if all(p.is_file() for p in paths) else None


async def fetch_one(
    line: Mapping[str, Any], directory: Path, downloader: Downloader, *, base: Path, now: float
) -> Fetched:
    """Fetch one results line's images into ``directory`` unless its files are all there."""
    index = line.get("index")
    urls, task_id = _urls(line), line.get("task_id")
    if line.get("status") not in _WITH_RESULT or not urls or not isinstance(task_id, str):
        return Fetched(index=index, outcome=Outcome.NO_RESULT)
    present = _present(line, base)
    if present is not None:
        return Fetched(index=index, outcome=Outcome.PRESENT, files=present)
    stem = f"{index:06d}" if isinstance(index, int) else task_id
    age = result_age(line, now)
    try:
        files = await downloader.fetch_all(urls, directory, stem, owner=task_id)
    except DownloadError as e:
        gone = age is not None and age > EXPIRES_AFTER
        outcome = Outcome.EXPIRED if gone else Outcome.FAILED
        return Fetched(index=index, outcome=outcome, reason=str(e), age=age)
    return Fetched(index=index, outcome=Outcome.DOWNLOADED, files=tuple(files), age=age)


async def fetch_missing(
    lines: Sequence[Mapping[str, Any]],
    directory: Path,
    downloader: Downloader,
    *,
    base: Path,
    now: float,
) -> list[Fetched]:
    """Every line's outcome, in the lines' order, ``CONCURRENCY`` inputs at a time."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(line: Mapping[str, Any]) -> Fetched:
        async with slots:
            return await fetch_one(line, directory, downloader, base=base, now=now)

    return list(await asyncio.gather(*(one(line) for line in lines)))


def updated_line(line: Mapping[str, Any], fetched: Fetched) -> dict[str, Any]:
    """The results line with the files just fetched (a failed download now succeeded)."""
    new = dict(line)
    if fetched.outcome != Outcome.DOWNLOADED:
        return new
    new["files"] = [str(f) for f in fetched.files]
    if new.get("status") == "download_failed":
        new["status"] = "succeeded"
        new.pop("error", None)
    return new


def rewrite_results(path: Path, lines: Sequence[Mapping[str, Any]]) -> None:
    """Replace the results file atomically: a reader sees the old lines or the new ones."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with temp.open("x", encoding="utf-8") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
