"""
Result downloads: the service's result URLs expire (about a day), so fetch them at once.

A result URL comes from a callback or a record, which a hostile party may have written (the
service's signature covers only the task id), so downloads trust nothing:

- **Never the user's own network.** Unless ``Settings.allow_private_downloads``, a host that
  is, or resolves to, a loopback, private, link-local, multicast or reserved address (IPv4
  or IPv6, IPv4-mapped included) is refused. Names are filtered by the connector's own
  resolver, so the address checked is the address connected to; redirects are followed by
  hand and every hop is checked again. Only http(s).
- **Only inside the target directory**, under names derived from what is safe (a task id is
  not a file name). Each file has a small ``.NAME.owner`` sidecar naming the task and URL it
  holds: a file is skipped on a rerun only when it belongs to the same task, and a file of
  another task is never overwritten (the new one takes a name of its own).
- **Complete or absent.** An image streams to ``.NAME.part`` (one fixed name, so a rerun after
  ``kill -9`` overwrites and removes the leftover) and is renamed into place; a size cap and
  a total time limit stop endless or trickling bodies. One failed image of a result cancels
  its siblings.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from ._config import Settings
from ._errors import DownloadError
from ._telemetry import ImagesDownloaded, Telemetry
from ._transport import backoff_delay

IMAGE_SUFFIXES = frozenset((".png", ".jpg", ".jpeg", ".webp", ".gif"))
_CHUNK = 64 * 1024
_MAX_REDIRECTS = 5
_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,99}")


class _Retryable(Exception):
    """A failure worth another try (5xx, 429, a network error)."""


class PrivateAddress(OSError):
    """A download host is, or resolves to, an address on the user's own network."""


def refusal(address: str) -> str | None:
    """Say why ``address`` (an IP literal) must not be downloaded from, or None if public."""
    ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    # Most specific first: Python counts link-local, reserved and 0.0.0.0 as private too.
    for rule in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{rule}"):
            return f"{address} is a {rule.replace('_', '-')} address"
    if not ip.is_global:  # shared (100.64/10), documentation ranges and the like
        return f"{address} is not a public address"
    return None


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]").split("%")[0])
    except ValueError:
        return False
    return True


Policy = Callable[[str], "str | None"]


class PublicOnlyResolver(AbstractResolver):
    """Resolves names like the default resolver, refusing any answer ``refuse`` objects to."""

    def __init__(self, refuse: Policy = refusal) -> None:
        self._inner = DefaultResolver()
        self._refuse = refuse

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host``; raise ``PrivateAddress`` if any answer is private."""
        answers = await self._inner.resolve(host, port, family)
        for answer in answers:
            if (why := self._refuse(answer["host"])) is not None:
                # One private answer refuses the name: round-robin could pick it next time.
                raise PrivateAddress(f"{host} resolves to a private address ({why})")
        return answers

    async def close(self) -> None:
        """Release the inner resolver."""
        await self._inner.close()


def image_name(stem: str, number: int, url: URL) -> str:
    """Return the file name of image ``number`` of a result (its URL's suffix kept)."""
    suffix = Path(url.path).suffix.lower()
    return f"{stem}_{number}{suffix if suffix in IMAGE_SUFFIXES else '.img'}"


def safe_stem(name: str) -> str:
    """A file-name stem for ``name`` (a task id): itself if harmless, else a digest."""
    if _SAFE_STEM.fullmatch(name):
        return name
    return "task-" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:20]


class Downloader:
    """Fetches result images into a directory, a bounded number at a time."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        concurrency: int = 8,
        max_bytes: int = 64 * 1024 * 1024,
        owns_session: bool = False,
        refuse: Policy = refusal,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._session = session
        self.telemetry = telemetry or Telemetry()
        self._refuse = refuse
        self._owns_session = owns_session
        self._settings = settings
        self._slots = asyncio.Semaphore(concurrency)
        self.max_bytes = max_bytes
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
        )

    @classmethod
    def for_settings(
        cls,
        shared: aiohttp.ClientSession,
        settings: Settings,
        *,
        refuse: Policy = refusal,
        telemetry: Telemetry | None = None,
    ) -> Downloader:
        """A downloader that, unless private downloads are allowed, has its own guarded pool."""
        if settings.allow_private_downloads:
            return cls(shared, settings, telemetry=telemetry)
        connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver(refuse), limit=16)
        session = aiohttp.ClientSession(connector=connector)
        return cls(session, settings, owns_session=True, refuse=refuse, telemetry=telemetry)

    async def aclose(self) -> None:
        """Close the guarded pool this downloader made (never a shared session)."""
        if self._owns_session:
            await self._session.close()

    async def fetch_all(
        self, urls: tuple[URL, ...], directory: Path, stem: str, *, owner: str
    ) -> list[Path]:
        """Download every image of ``owner``'s result as ``{stem}_{n}{suffix}``."""
        if not self.telemetry.active:
            return await self._fetch_all(urls, directory, stem, owner=owner)
        started = time.monotonic()
        try:
            paths = await self._fetch_all(urls, directory, stem, owner=owner)
        except DownloadError as e:
            took = time.monotonic() - started
            self.telemetry.emit(ImagesDownloaded(task_id=owner, seconds=took, error=e))
            raise
        took = time.monotonic() - started
        self.telemetry.emit(ImagesDownloaded(task_id=owner, paths=tuple(paths), seconds=took))
        return paths

    async def _fetch_all(
        self, urls: tuple[URL, ...], directory: Path, stem: str, *, owner: str
    ) -> list[Path]:
        stem = safe_stem(stem)
        try:
            directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (a local mkdir is µs)
        except OSError as e:
            raise DownloadError(
                urls[0] if urls else URL(), f"cannot create {directory}: {e}"
            ) from e
        if not directory.is_dir():  # noqa: ASYNC240
            raise DownloadError(urls[0] if urls else URL(), f"{directory} is not a directory")
        try:
            async with asyncio.TaskGroup() as group:
                fetches = [
                    group.create_task(self.fetch(url, directory, image_name(stem, n, url), owner))
                    for n, url in enumerate(urls)
                ]
        except ExceptionGroup as failed:  # the first failure cancelled its siblings
            first = failed.exceptions[0]
            if isinstance(first, DownloadError):
                raise first from None
            raise DownloadError(urls[0], f"{type(first).__name__}: {first}") from first
        return [f.result() for f in fetches]

    async def fetch(self, url: URL, directory: Path, name: str, owner: str) -> Path:
        """Download ``url`` as ``directory/name`` unless ``owner``'s copy is already there."""
        target = _inside(directory, name, url)
        if _owned_by(target, owner):
            return target
        if target.exists():
            digest = hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:10]
            target = _inside(directory, f"{target.stem}.{digest}{target.suffix}", url)
            if _owned_by(target, owner):
                return target
        attempts = self._settings.query_attempts
        for attempt in range(attempts):
            try:
                async with self._slots, asyncio.timeout(self._settings.download_timeout):
                    return await self._fetch_once(url, target, owner)
            except TimeoutError as e:
                error: Exception = _Retryable(
                    f"not complete in {self._settings.download_timeout:g} s"
                )
                error.__cause__ = e
            except _Retryable as e:
                error = e
            if attempt + 1 == attempts:
                raise DownloadError(url, str(error)) from error
            await asyncio.sleep(backoff_delay(self._settings, attempt))
        raise AssertionError("unreachable: the last attempt raises or returns")

    async def _fetch_once(self, url: URL, target: Path, owner: str) -> Path:
        for _ in range(_MAX_REDIRECTS + 1):
            self._check(url)
            try:
                async with self._session.get(
                    url, timeout=self._timeout, allow_redirects=False
                ) as resp:
                    if resp.status in (301, 302, 303, 307, 308) and "Location" in resp.headers:
                        url = url.join(URL(resp.headers["Location"]))
                        continue
                    return await self._save_answer(resp, url, target, owner)
            except aiohttp.ClientConnectorError as e:
                if isinstance(e.os_error, PrivateAddress):
                    raise DownloadError(url, f"refused: {e.os_error}") from None
                raise _Retryable(f"{type(e).__name__}: {e}") from e
            except (aiohttp.ClientError, ValueError) as e:
                raise _Retryable(f"{type(e).__name__}: {e}") from e
        raise DownloadError(url, f"more than {_MAX_REDIRECTS} redirects")

    def _check(self, url: URL) -> None:
        if url.scheme not in ("http", "https") or not url.host:
            raise DownloadError(url, "only absolute http(s) URLs are fetched")
        if self._settings.allow_private_downloads or not _ip_literal(url.host):
            return  # names are checked by the guarded resolver, at connect time
        if (why := self._refuse(url.host)) is not None:
            raise DownloadError(url, f"refused: {why} (allow_private_downloads is off)")

    async def _save_answer(
        self, resp: aiohttp.ClientResponse, url: URL, target: Path, owner: str
    ) -> Path:
        if resp.status >= 500 or resp.status == 429:
            raise _Retryable(f"HTTP {resp.status}")
        if resp.status != 200:
            raise DownloadError(url, f"HTTP {resp.status}")
        if (resp.content_length or 0) > self.max_bytes:
            raise DownloadError(url, f"larger than {self.max_bytes} bytes")
        part = target.with_name(f".{target.name}.part")
        try:
            size = 0
            with part.open("wb") as out:
                async for chunk in resp.content.iter_chunked(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise DownloadError(url, f"larger than {self.max_bytes} bytes")
                    out.write(chunk)
            _sidecar(target).write_text(
                json.dumps({"task_id": owner, "url": str(url), "bytes": size}), encoding="utf-8"
            )
            os.replace(part, target)
        except OSError as e:
            raise DownloadError(url, f"cannot write {target}: {e.strerror or e}") from e
        finally:
            with contextlib.suppress(OSError):
                part.unlink()
        return target


def _inside(directory: Path, name: str, url: URL) -> Path:
    """``directory / name``, refusing any name that would land elsewhere."""
    target = directory / name
    if target.resolve().parent != directory.resolve():
        raise DownloadError(url, f"refused: {name!r} would be written outside {directory}")
    return target


def _sidecar(target: Path) -> Path:
    return target.with_name(f".{target.name}.owner")


def _owned_by(target: Path, owner: str) -> bool:
    """True when ``target`` is complete and holds ``owner``'s image (say, from an earlier run)."""
    try:
        meta: Any = json.loads(_sidecar(target).read_text(encoding="utf-8"))
        size = target.stat().st_size
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("task_id") == owner and meta.get("bytes") == size
