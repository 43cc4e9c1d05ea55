"""
Local images to URLs: the service's stream-upload API, once per content.

- **Bounded memory.** A file is streamed as multipart in 256 KiB chunks; bytes given in memory
  are sent as they are (the caller holds them already).
- **Once per content.** A file is known by its SHA-256 and uploaded under a name derived
  from it, so every edit using the same content shares one upload, also when they ask at
  the same moment (one upload, awaited by all). An upload is reused for
  ``upload_reuse_for`` (20 h) and then made again: the sources disagree on how long the
  service keeps files (24 h or 3 days), so we build for 24 h.
- **Safe retries.** Timeouts, 5xx and 429 are retried with backoff: the name is the content
  hash, and the service overwrites equal names with equal bytes, so a repeat changes nothing
  and costs nothing (uploads are free).
- **What was checked is what is sent.** A file is opened once (never through a symbolic
  link), checked by its descriptor (a regular file of the checked size and kind), hashed and
  streamed from it; every retry re-reads that descriptor from offset 0, after checking size
  and hash again, and the last chunk of an attempt goes out only once the bytes sent hash to
  the checked content. A file that changed raises ``UploadChanged``; nothing of it is stored.
- **Own limits.** Uploads have their own concurrency bound and rate window, conservative
  because the upload API's limits are not documented.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import aiohttp.payload
from aiohttp.abc import AbstractStreamWriter
from yarl import URL

from ._config import Settings
from ._errors import (
    ApiError,
    InvalidRequest,
    RateLimited,
    ServerError,
    UploadChanged,
    UploadError,
)
from ._limits import SlidingWindowLimiter
from ._models import (
    MAX_IMAGE_BYTES,
    EditRequest,
    LocalImage,
    TaskRequest,
    checked_path,
    image_kind,
    open_no_follow,
    pin_sha256,
)
from ._transport import backoff_delay
from ._wire import MalformedPayload, parse_upload, read_envelope

log = logging.getLogger("seedream_async")

STREAM_PATH = "file-stream-upload"
#: Read, hashed and sent in these: each read is one hop to a thread, and at 64 KiB the hops
#: cost a fifth of the upload throughput (measured on loopback).
_CHUNK = 256 * 1024
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

    async def resolve(self, request: TaskRequest) -> TaskRequest:
        """``request`` with every local image replaced by its uploaded URL."""
        if not request.local_images:
            return request
        given: Any = request  # every request with local images has ``image_urls``
        urls = [
            await self.upload_image(u) if isinstance(u, LocalImage) else u for u in given.image_urls
        ]
        if type(request) is not EditRequest:
            resolved: TaskRequest = given.with_image_urls(urls)
            return resolved
        return EditRequest(
            prompt=request.prompt,
            image_urls=urls,
            aspect_ratio=request.aspect_ratio,
            quality=request.quality,
            nsfw_checker=request.nsfw_checker,
            extra_input=request.extra_input,
        )

    async def upload_image(self, image: LocalImage, file_name: str | None = None) -> URL:
        """The URL of ``image``'s content, uploaded once (shared by concurrent callers)."""
        async with self._hashing:  # bounded like uploads: memory stays flat for any count
            file = await _open_checked(image)  # hashing 10 MB takes ms
        name = file_name or file.sha256[:32] + image.suffix
        return await self._once(file.sha256, lambda: self._send(file, name), file)

    async def upload_bytes(self, data: bytes, file_name: str | None = None) -> URL:
        """The URL of ``data`` (an image in memory), uploaded once."""
        kind = image_kind(data[:16])
        if kind is None:
            raise InvalidRequest("file", "not a JPEG, PNG or WebP image")
        if len(data) > MAX_IMAGE_BYTES:
            raise InvalidRequest("file", f"{len(data)} bytes, over the 10 MB limit of an image")
        sha256 = hashlib.sha256(data).hexdigest()
        name = file_name or sha256[:32] + _SUFFIX[kind]
        return await self._once(sha256, lambda: self._send(data, name))

    async def _once(
        self, sha256: str, send: Callable[[], Any], file: CheckedFile | None = None
    ) -> URL:
        """Reuse or join the upload of ``sha256``, else start it; ``file`` is closed once it
        is not needed (at once, or when the upload it feeds ends)."""
        fresh = self._done.get(sha256)
        if fresh is not None and time.time() - fresh[1] < self._settings.upload_reuse_for:
            if file is not None:
                file.close()
            return fresh[0]
        pending = self._pending.get(sha256)
        if pending is None:
            pending = asyncio.ensure_future(self._upload(sha256, send))
            self._pending[sha256] = pending
            pending.add_done_callback(lambda _: self._pending.pop(sha256, None))
            if file is not None:
                pending.add_done_callback(lambda _: file.close())
        elif file is not None:
            file.close()
        return await asyncio.shield(pending)

    async def _upload(self, sha256: str, send: Callable[[], Any]) -> URL:
        url: URL = await send()
        when = time.time()
        self._done[sha256] = (url, when)
        self.uploaded += 1
        for listener in self.listeners:
            listener(sha256, url, when)
        return url

    async def _send(self, body: bytes | CheckedFile, name: str) -> URL:
        where = body.image.path if isinstance(body, CheckedFile) else None
        attempts = self._settings.query_attempts
        for attempt in range(attempts):
            try:
                if attempt and isinstance(body, CheckedFile):
                    await asyncio.to_thread(body.check_unchanged)
                async with self._slots:
                    return await self._send_once(body, name)
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

    async def _send_once(self, body: bytes | CheckedFile, name: str) -> URL:
        form = aiohttp.FormData()
        form.add_field("uploadPath", self._settings.upload_folder)
        form.add_field("fileName", name)
        part = _CheckedPayload(body) if isinstance(body, CheckedFile) else body
        form.add_field("file", part, filename=name, content_type="application/octet-stream")
        await self._limiter.acquire()
        sent = False
        try:
            async with self._session.post(
                self._url, data=form, headers=self._headers, timeout=self._timeout
            ) as resp:
                sent = True
                raw = await resp.content.read(1 << 20)
                status = resp.status
        except aiohttp.ClientError:
            if isinstance(part, _CheckedPayload) and part.changed is not None:
                raise part.changed from None
            raise
        finally:
            self._limiter.release(sent=sent)
        try:
            return parse_upload(read_envelope(status, raw, endpoint="upload"))
        except MalformedPayload as e:
            raise ServerError(str(e), code=None, http_status=status, endpoint="upload") from e


class CheckedFile:
    """One local image, opened once: checked, hashed and re-read through that descriptor only."""

    __slots__ = ("_fd", "image", "sha256")

    def __init__(self, fd: int, image: LocalImage) -> None:
        self._fd: int | None = fd
        self.image = image
        self.sha256 = ""

    @classmethod
    def open(cls, image: LocalImage) -> CheckedFile:
        """Open and check ``image`` (blocking: call it in a thread)."""
        try:
            fd = open_no_follow(checked_path(image))
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise UploadChanged(image.path, "it is a symbolic link now") from None
            raise UploadError(image.path, e.strerror or str(e)) from None
        file = cls(fd, image)
        try:
            file.sha256 = file.hash_checked()
        except BaseException:
            file.close()
            raise
        if pin_sha256(image, file.sha256) != file.sha256:  # hashed by path earlier (a journal)
            file.close()
            raise UploadChanged(image.path, "its content changed since it was checked")
        return file

    def hash_checked(self) -> str:
        """The SHA-256 of the descriptor's content, if it is still what was checked."""
        info = os.fstat(self.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise UploadChanged(self.image.path, "it is no longer a regular file")
        if info.st_size != self.image.size:
            raise UploadChanged(
                self.image.path,
                f"its size changed from {self.image.size} to {info.st_size} bytes since it "
                "was checked",
            )
        digest = hashlib.sha256()
        head = b""
        for chunk in self.chunks(_CHUNK):
            head = head or chunk[:16]
            digest.update(chunk)
        if image_kind(head) != self.image.kind:
            raise UploadChanged(self.image.path, "it is no longer the image kind checked")
        return digest.hexdigest()

    def check_unchanged(self) -> None:
        """Raise ``UploadChanged`` unless the size and hash are still the checked ones."""
        if self.hash_checked() != self.sha256:
            raise UploadChanged(self.image.path, "its content changed since it was checked")

    def chunks(self, size: int) -> Iterator[bytes]:
        """The checked size's bytes from offset 0; ``UploadChanged`` if the file is shorter."""
        offset, end = 0, self.image.size
        while offset < end:
            chunk = _read_at(self.fileno(), min(size, end - offset), offset)
            if not chunk:
                raise UploadChanged(self.image.path, "it was cut short since it was checked")
            offset += len(chunk)
            yield chunk

    def fileno(self) -> int:
        if self._fd is None:
            raise UploadError(self.image.path, "its upload has ended")
        return self._fd

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


async def _open_checked(image: LocalImage) -> CheckedFile:
    """``CheckedFile.open`` in a thread; a caller cancelled meanwhile leaks no descriptor."""
    opening = asyncio.ensure_future(asyncio.to_thread(CheckedFile.open, image))
    try:
        return await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)
        raise


def _close_opened(opening: asyncio.Future[CheckedFile]) -> None:
    if not opening.cancelled() and opening.exception() is None:
        opening.result().close()


def _next_hashed(chunks: Iterator[bytes], digest: Any) -> bytes:
    """The next chunk, hashed into ``digest`` (in a thread: hashing is off the loop)."""
    chunk = next(chunks, b"")
    digest.update(chunk)
    return chunk


def _read_at(fd: int, size: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)  # Windows: attempts on one file never overlap
    return os.read(fd, size)


class _CheckedPayload(aiohttp.payload.Payload):
    """A checked file as a request body part, from offset 0 of its descriptor: the last
    chunk is held back until the bytes sent hash to the checked content, so a file changed
    mid-send leaves the service a broken request, never a stored file."""

    def __init__(self, file: CheckedFile) -> None:
        super().__init__(file, content_type="application/octet-stream")
        self._size = file.image.size
        self._file = file
        #: Why the body was cut off, if the file changed while it was sent.
        self.changed: UploadChanged | None = None

    async def write(self, writer: AbstractStreamWriter) -> None:
        digest = hashlib.sha256()
        held = b""
        chunks = self._file.chunks(_CHUNK)
        loop = asyncio.get_running_loop()
        try:
            while chunk := await loop.run_in_executor(None, _next_hashed, chunks, digest):
                if held:
                    await writer.write(held)
                held = chunk
        except UploadChanged as e:
            self.changed = e
            raise
        if digest.hexdigest() != self._file.sha256:
            self.changed = UploadChanged(
                self._file.image.path, "its content changed while it was sent"
            )
            raise self.changed
        await writer.write(held)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._file.chunks(_CHUNK)).decode(encoding, errors)
