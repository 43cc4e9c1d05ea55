"""Pure HMAC signing and verification of callbacks, as the service documents it."""

from __future__ import annotations

import base64
import hashlib
import hmac


def sign(key: bytes, task_id: str, timestamp: str) -> str:
    """Return base64(HMAC-SHA256(key, ``task_id + "." + timestamp``))."""
    digest = hmac.new(key, f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def verify(key: bytes, task_id: str, timestamp: str, signature: str) -> bool:
    """Tell, in constant time, whether ``signature`` signs this task id and timestamp."""
    # compare_digest refuses non-ASCII str; a header is attacker-controlled, so compare bytes.
    expected = sign(key, task_id, timestamp).encode("ascii")
    return hmac.compare_digest(expected, signature.encode("utf-8", "surrogateescape"))
