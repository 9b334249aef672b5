"""Request and decision ids: random (version 4) UUIDs as 32 hex digits.

``uuid.uuid4().hex`` builds a ``UUID`` object (a range-checked integer, then its
hex form): about 4.8 µs on the bench machine, twice on every decision request.
``uuid4_hex`` sets the same version and variant bits on 16 bytes from the same
source (``os.urandom``) and formats them directly: the same values, with the same
distribution, in about a third of the time. A property test holds the two equal
for any 16 bytes.
"""

from __future__ import annotations

import os


def uuid4_hex(random_bytes: bytes | None = None) -> str:
    """``uuid.UUID(bytes=random_bytes, version=4).hex``; fresh random bytes by default."""
    raw = bytearray(os.urandom(16) if random_bytes is None else random_bytes)
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    return raw.hex()
