"""RFC 9530 ``Content-Digest``: sha-256 and sha-512 over the exact body bytes."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence

import http_sf

ALGORITHMS = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}


class DigestError(ValueError):
    """The Content-Digest field is malformed, unsupported or does not match."""


def content_digest(body: bytes, algorithms: Sequence[str] = ("sha-256",)) -> str:
    """The Content-Digest field value for ``body``."""
    members: dict[str, tuple[bytes, dict[str, str]]] = {
        alg: (ALGORITHMS[alg](body).digest(), {}) for alg in algorithms
    }
    return str(http_sf.ser(members))  # type: ignore[arg-type]


def verify_content_digest(field_value: str, body: bytes) -> None:
    """Check every supported digest in the field; at least one must be present."""
    # Fast path: the field is exactly the canonical sha-256 member for this body, so it
    # is well-formed and matches by construction. Anything else takes the full parse.
    if field_value.startswith("sha-256=:") and field_value == _canonical_sha256(body):
        return
    try:
        members = http_sf.parse(field_value.encode("ascii"), tltype="dictionary")
    except (http_sf.StructuredFieldError, UnicodeEncodeError, ValueError) as exc:
        raise DigestError("malformed Content-Digest") from exc
    assert isinstance(members, dict)
    checked = 0
    for alg, member in members.items():
        if alg not in ALGORITHMS:
            continue  # RFC 9530 §2: unknown algorithms are ignored
        value = member[0] if isinstance(member, tuple) else member
        if not isinstance(value, bytes):
            raise DigestError("Content-Digest value is not a byte sequence")
        if not hmac.compare_digest(value, ALGORITHMS[alg](body).digest()):
            raise DigestError(f"{alg} digest does not match the body")
        checked += 1
    if not checked:
        raise DigestError("no supported algorithm in Content-Digest")


def _canonical_sha256(body: bytes) -> str:
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


def encode_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
