"""
Local images to URLs: the service's stream-upload API, once per content.

- **Bounded memory.** A file is streamed as multipart in 64 KiB chunks; bytes given in memory
  are sent as they are (the caller holds them already).
- **Once per content.** A file is known by its SHA-256 and uploaded under a name derived
  from it, so every edit using the same content shares one upload, also when they ask at
  the same moment (one upload, awaited by all). An upload is reused for
  ``upload_reuse_for`` (20 h) and then made again: the sources disagree on how long the
  service keeps files (24 h or 3 days), so we build for 24 h.
- **Safe retries.** Timeouts, 5xx and 429 are retried with backoff: the name is the content
  hash, and the service overwrites equal names with equal bytes, so a repeat changes nothing
  and costs nothing (uploads are free).
- **Own limits.** Uploads have their own concurrency bound and rate window, conservative
  because the upload API's limits are not documented.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from yarl import URL

from ._config import Settings
from ._errors import ApiError, InvalidRequest, RateLimited, ServerError, UploadError
from ._limits import SlidingWindowLimiter
from ._models import MAX_IMAGE_BYTES, EditRequest, LocalImage, image_kind
from ._transport import backoff_delay
from ._wire import MalformedPayload, parse_upload, read_envelope

log = logging.getLogger("seedream_async")

STREAM_PATH = "file-stream-upload"
_CHUNK = 64 * 1024
_SUFFIX = {"jpeg": ".jpg", "png": ".png", "webp": ".webp"}

#: Told of each upload made: content hash, URL, wall-clock time (a journal keeps them).
OnUploaded = Callable[[str, URL, float], object]


class Uploader:
    """Uploads local images for one client."""

    def __init__(
        self, session: aiohttp.ClientSession, base_url: URL, api_key: str, settings: Settings
    ) -> None:
        self._session = session
        self._settings = settings
        root = URL(settings.upload_base_url) if settings.upload_base_url else base_url
        self._url = root / settings.upload_path.strip("/") / STREAM_PATH
        self._headers = {"Authorization": f"Bearer {api_key}", "User-Agent": settings.user_agent}
        self._slots = asyncio.Semaphore(settings.upload_concurrency)
        self._hashing = asyncio.Semaphore(settings.upload_concurrency)
        self._limiter = SlidingWindowLimiter(settings.upload_rate, settings.upload_period)
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout, sock_read=settings.request_timeout
        )
        #: sha256 -> (URL, wall-clock time it was uploaded).
        self._done: dict[str, tuple[URL, float]] = {}
        self._pending: dict[str, asyncio.Future[URL]] = {}
        #: Told of each upload made (a batch's journal keeps them).
        self.listeners: list[OnUploaded] = []
        #: Uploads actually sent (a progress display reads it).
        self.uploaded = 0

    def remember(self, sha256: str, url: URL, when: float) -> None:
        """Know of an earlier upload (from a journal): reused while it is fresh."""
        if time.time() - when < self._settings.upload_reuse_for:
            self._done[sha256] = (url, when)

    async def resolve(self, request: EditRequest) -> EditRequest:
        """``request`` with every local image replaced by its uploaded URL."""
        if not request.local_images:
            return request
        urls = [
            await self.upload_image(u) if isinstance(u, LocalImage) else u
            for u in request.image_urls
        ]
        return EditRequest(
            prompt=request.prompt,
            image_urls=urls,
            aspect_ratio=request.aspect_ratio,
            quality=request.quality,
            nsfw_checker=request.nsfw_checker,
        )

    async def upload_image(self, image: LocalImage, file_name: str | None = None) -> URL:
        """The URL of ``image``'s content, uploaded once (shared by concurrent callers)."""
        async with self._hashing:  # bounded like uploads: memory stays flat for any count
            sha256 = await asyncio.to_thread(lambda: image.sha256)  # hashing 10 MB takes ms
        return await self._once(sha256, lambda: self._send_file(image, sha256, file_name))

    async def upload_bytes(self, data: bytes, file_name: str | None = None) -> URL:
        """The URL of ``data`` (an image in memory), uploaded once."""
        kind = image_kind(data[:16])
        if kind is None:
            raise InvalidRequest("file", "not a JPEG, PNG or WebP image")
        if len(data) > MAX_IMAGE_BYTES:
            raise InvalidRequest("file", f"{len(data)} bytes, over the 10 MB limit of an image")
        sha256 = hashlib.sha256(data).hexdigest()
        name = file_name or sha256[:32] + _SUFFIX[kind]
        return await self._once(sha256, lambda: self._send(data, name, None))

    async def _once(self, sha256: str, send: Callable[[], Any]) -> URL:
        fresh = self._done.get(sha256)
        if fresh is not None and time.time() - fresh[1] < self._settings.upload_reuse_for:
            return fresh[0]
        pending = self._pending.get(sha256)
        if pending is None:
            pending = asyncio.ensure_future(self._upload(sha256, send))
            self._pending[sha256] = pending
            pending.add_done_callback(lambda _: self._pending.pop(sha256, None))
        return await asyncio.shield(pending)

    async def _upload(self, sha256: str, send: Callable[[], Any]) -> URL:
        url: URL = await send()
        when = time.time()
        self._done[sha256] = (url, when)
        self.uploaded += 1
        for listener in self.listeners:
            listener(sha256, url, when)
        return url

    async def _send_file(self, image: LocalImage, sha256: str, file_name: str | None) -> URL:
        try:
            now = LocalImage.open(image.path)
        except InvalidRequest as e:
            raise UploadError(image.path, e.message) from None
        if (now.size, now.kind) != (image.size, image.kind):
            raise UploadError(image.path, "the file changed since it was checked")
        return await self._send(None, file_name or sha256[:32] + image.suffix, image)

    async def _send(self, data: bytes | None, name: str, image: LocalImage | None) -> URL:
        where = image.path if image is not None else None
        attempts = self._settings.query_attempts
        for attempt in range(attempts):
            try:
                async with self._slots:
                    return await self._send_once(data, name, image)
            except (RateLimited, ServerError) as e:
                status = e.http_status or 0
                if attempt + 1 == attempts or (400 <= status < 500 and status != 429):
                    raise UploadError(where, str(e)) from e  # a 413 page will not change
            except (aiohttp.ClientError, TimeoutError) as e:
                if attempt + 1 == attempts:
                    raise UploadError(where, f"{type(e).__name__}: {e}") from e
            except ApiError as e:
                raise UploadError(where, e.message or str(e)) from e
            await asyncio.sleep(backoff_delay(self._settings, attempt))
        raise AssertionError("unreachable: the last attempt raises or returns")

    async def _send_once(self, data: bytes | None, name: str, image: LocalImage | None) -> URL:
        form = aiohttp.FormData()
        form.add_field("uploadPath", self._settings.upload_folder)
        form.add_field("fileName", name)
        with contextlib.ExitStack() as files:
            # A file object is streamed by aiohttp in chunks, never read whole.
            body: Any = files.enter_context(image.path.open("rb")) if image else data
            form.add_field("file", body, filename=name, content_type="application/octet-stream")
            await self._limiter.acquire()
            sent = False
            try:
                async with self._session.post(
                    self._url, data=form, headers=self._headers, timeout=self._timeout
                ) as resp:
                    sent = True
                    raw = await resp.content.read(1 << 20)
                    status = resp.status
            finally:
                self._limiter.release(sent=sent)
        try:
            return parse_upload(read_envelope(status, raw, endpoint="upload"))
        except MalformedPayload as e:
            raise ServerError(str(e), code=None, http_status=status, endpoint="upload") from e
