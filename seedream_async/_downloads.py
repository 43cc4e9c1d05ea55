"""
Result downloads: the service's result URLs expire (about a day), so fetch them at once.

Each image is streamed to a temporary file beside its target and renamed into place, so a
file under its final name is always complete (and skipped on resume). Names are
deterministic; concurrency is bounded; the idempotent GET is retried; only http(s) URLs are
fetched, and a size cap stops an endless body.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from pathlib import Path

import aiohttp
from yarl import URL

from ._config import Settings
from ._errors import DownloadError
from ._transport import backoff_delay

IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".webp", ".gif"))
_CHUNK = 64 * 1024


class _Retryable(Exception):
    """A failure worth another try (5xx, 429, a network error)."""


def image_name(stem: str, number: int, url: URL) -> str:
    """Return the file name of image ``number`` of a result (its URL's suffix kept)."""
    suffix = Path(url.path).suffix.lower()
    return f"{stem}_{number}{suffix if suffix in IMAGE_SUFFIXES else '.img'}"


class Downloader:
    """Fetches result images into a directory, a bounded number at a time."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        concurrency: int = 8,
        max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self._session = session
        self._settings = settings
        self._slots = asyncio.Semaphore(concurrency)
        self.max_bytes = max_bytes
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
        )

    async def fetch_all(self, urls: tuple[URL, ...], directory: Path, stem: str) -> list[Path]:
        """Download every image of a result as ``{stem}_{n}{suffix}`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a local mkdir is µs)
        targets = [directory / image_name(stem, n, url) for n, url in enumerate(urls)]
        await asyncio.gather(*(self.fetch(u, t) for u, t in zip(urls, targets, strict=True)))
        return targets

    async def fetch(self, url: URL, target: Path) -> Path:
        """Download ``url`` to ``target`` unless it is already there."""
        if target.exists():  # noqa: ASYNC240 (one local stat; renamed files are complete)
            return target
        if url.scheme not in ("http", "https") or not url.host:
            raise DownloadError(url, "only absolute http(s) URLs are fetched")
        attempts = self._settings.query_attempts
        for attempt in range(attempts):
            try:
                async with self._slots:
                    return await self._fetch_once(url, target)
            except _Retryable as e:
                if attempt + 1 == attempts:
                    raise DownloadError(url, str(e)) from e
            await asyncio.sleep(backoff_delay(self._settings, attempt))
        raise AssertionError("unreachable: the last attempt raises or returns")

    async def _fetch_once(self, url: URL, target: Path) -> Path:
        try:
            async with self._session.get(url, timeout=self._timeout) as resp:
                if resp.status >= 500 or resp.status == 429:
                    raise _Retryable(f"HTTP {resp.status}")
                if resp.status != 200:
                    raise DownloadError(url, f"HTTP {resp.status}")
                if (resp.content_length or 0) > self.max_bytes:
                    raise DownloadError(url, f"larger than {self.max_bytes} bytes")
                return await self._save(resp, url, target)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _Retryable(f"{type(e).__name__}: {e}") from e

    async def _save(self, resp: aiohttp.ClientResponse, url: URL, target: Path) -> Path:
        part = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            size = 0
            with part.open("wb") as out:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise DownloadError(url, f"larger than {self.max_bytes} bytes")
                    out.write(chunk)
            os.replace(part, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
        return target
