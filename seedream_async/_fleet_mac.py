"""
Sealing what crosses the fleet's Redis: HMAC-SHA256 under a key only the account holds.

Anyone who can write to Redis could otherwise hand every process of a namespace a record
of their own making. The key is derived from the API key and the namespace, so there is
nothing new to configure and Redis never holds it; processes with another API key (another
account) never accept each other's records. Each ``kind`` of record is its own domain: a
seal made for one kind never opens as another.
"""

from __future__ import annotations

import base64
import hmac

_CONTEXT = "seedream-async fleet v1|"
#: Characters of a tag: unpadded base64url of 32 bytes.
TAG_LENGTH = 43
_SEP = b"|"


class FleetMac:
    """Tags and seals of one namespace of one account (``repr()`` never shows the key)."""

    __slots__ = ("_key",)

    def __init__(self, api_key: str, namespace: str) -> None:
        self._key = hmac.digest(api_key.encode(), (_CONTEXT + namespace).encode(), "sha256")

    def __repr__(self) -> str:
        return "<FleetMac>"

    def tag(self, kind: bytes, body: bytes) -> bytes:
        """The tag of ``body`` as a record of ``kind``: ASCII, ``TAG_LENGTH`` characters."""
        mac = hmac.digest(self._key, kind + _SEP + body, "sha256")
        return base64.urlsafe_b64encode(mac)[:TAG_LENGTH]

    def seal(self, kind: bytes, body: bytes) -> bytes:
        """``body`` with its tag in front, as Redis keeps and carries it."""
        return self.tag(kind, body) + _SEP + body

    def open(self, kind: bytes, sealed: bytes) -> bytes | None:
        """The body of a genuine seal of ``kind``; None for anything else (compared in
        constant time)."""
        tag, sep, body = sealed.partition(_SEP)
        if not sep or len(tag) != TAG_LENGTH:
            return None
        return body if hmac.compare_digest(tag, self.tag(kind, body)) else None
