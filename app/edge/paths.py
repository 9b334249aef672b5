"""Path normalisation: done once at the edge, used for the decision and downstream.

Authorizing one path and forwarding another is the classic gateway bypass, so
the normalised path is the only path later stages see. Rules, in order:

1. the raw request target is ASCII; control characters, NUL, backslash and ``;``
   (path parameters, ``..;/`` tricks) are rejected;
2. percent-escapes are decoded only for unreserved characters (RFC 3986 §2.3);
   an escaped ``/``, ``\\``, ``;``, control byte or any byte >= 0x80 (overlong
   UTF-8, look-alikes) is rejected; other escapes keep their upper-case form;
3. empty segments (``//``) collapse; dot segments are removed (RFC 3986 §5.2.4)
   and climbing above the root is rejected;
4. a trailing slash is removed (except for ``/``); case is preserved.
"""

from __future__ import annotations

import re
import string

from app.core.errors import InvalidPath

_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_FORBIDDEN_RAW = re.compile(r"[\x00-\x20\x7f\\;]")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN_ESCAPED = frozenset({0x2F, 0x5C, 0x3B})  # / \ ;


def _decode_escape(match: re.Match[str]) -> str:
    byte = int(match.group(1), 16)
    if byte < 0x20 or byte >= 0x7F or byte in _FORBIDDEN_ESCAPED:
        raise InvalidPath("The request path contains a forbidden encoded character.")
    char = chr(byte)
    return char if char in _UNRESERVED else f"%{byte:02X}"


def _remove_dot_segments(segments: list[str]) -> list[str]:
    out: list[str] = []
    for segment in segments:
        if segment in ("", "."):
            continue
        if segment == "..":
            if not out:
                raise InvalidPath("The request path climbs above the root.")
            out.pop()
            continue
        out.append(segment)
    return out


def normalize_path(raw_path: bytes | str) -> str:
    """Return the canonical form of a request path, or raise ``InvalidPath``."""
    try:
        text = raw_path.decode("ascii") if isinstance(raw_path, bytes) else raw_path
        text.encode("ascii")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise InvalidPath("The request path must be ASCII.") from None
    if not text.startswith("/") or _FORBIDDEN_RAW.search(text) or _BAD_ESCAPE.search(text):
        raise InvalidPath("The request path is malformed.")
    decoded = _ESCAPE.sub(_decode_escape, text)
    segments = _remove_dot_segments(decoded.split("/"))
    return "/" + "/".join(segments)
