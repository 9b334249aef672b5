"""Path normalisation: done once at the edge, used for the decision and downstream.

Authorizing one path and forwarding another is the classic gateway bypass, so
the normalised path is the only path later stages see (the query string is
split off before this and is never part of the policy object). Rules, in order:

1. the raw path is at most 4,096 characters of the RFC 3986 ``pchar`` set plus
   ``/``: unreserved, ``%``, ``:``, ``@`` and the sub-delims except ``;``.
   Anything else is rejected: non-ASCII (unicode look-alikes such as Cyrillic
   ``U+0430``), control characters and NUL, space, backslash, ``#``, quotes, brackets,
   and ``;`` (path parameters, Tomcat's ``..;/`` trick);
2. percent-escapes are decoded only for unreserved characters (RFC 3986 §2.3),
   so ``%2e%2e`` becomes ``..`` *before* dot segments are removed. An escaped
   ``/``, ``\\``, ``;``, ``%`` (double encoding, ``%252e``), control byte or any
   byte >= 0x80 (overlong UTF-8 such as ``%c0%ae``, encoded look-alikes) is
   rejected; other escapes stay encoded, with upper-case hex digits;
3. empty segments (``//``) collapse; dot segments are removed (RFC 3986 §5.2.4)
   and climbing above the root is rejected;
4. trailing-slash rule: a trailing slash is removed (except for ``/``);
5. case rule: paths are case-sensitive (RFC 3986 §6.2.2.1) and case is
   preserved, never folded: ``/V1/Admin`` is a different resource that no
   lower-case rule matches, so it is denied by default and routed nowhere.
   Downstream services receive exactly the decided path, so they must not fold
   case either (see ``app/api/docs/policies.md``).

A request's own path (``normalize_request_path``, the edge's) has one more rule:
Envoy's ``ext_authz`` HTTP service asks at ``/v1/decisions/envoy`` followed by the
client's path, so what follows that prefix is normalised as a path of its own. A
``..`` in it cannot climb out of the prefix into the gateway's other routes (a
check request run as ``/admin/policy/reload``); climbing above its root is refused
like any path's.
"""

from __future__ import annotations

import re
import string

from app.core.errors import InvalidPath

MAX_PATH_LENGTH = 4096
_UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
_ALLOWED_RAW = re.compile(r"/[A-Za-z0-9\-._~%!$&'()*+,=:@/]*")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN_ESCAPED = frozenset({0x2F, 0x5C, 0x3B, 0x25})  # / \ ; %


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


def _is_canonical(text: str) -> bool:
    """Already canonical (the common case): nothing the rules below would change.

    Only for text that matched ``_ALLOWED_RAW``. Without ``%`` nothing decodes;
    without ``//`` no segment is empty; without ``/.`` no segment is ``.`` or
    ``..``; and a trailing slash is only kept for ``/``.
    """
    return (
        "%" not in text
        and "//" not in text
        and "/." not in text
        and (text == "/" or not text.endswith("/"))
    )


# Envoy ext_authz appends the client's path to this prefix (app/api/docs/decisions.md).
ENVOY_DECISION_PREFIX = "/v1/decisions/envoy"
_ENVOY_ANCHOR = ENVOY_DECISION_PREFIX + "/"


def normalize_request_path(raw_path: str) -> str:
    """``normalize_path`` for a request's own path, the Envoy decision prefix anchored:
    the part after it is normalised as a path of its own, so its dot segments stay in it."""
    if not raw_path.startswith(_ENVOY_ANCHOR):
        return normalize_path(raw_path)
    if len(raw_path) > MAX_PATH_LENGTH:
        raise InvalidPath(f"The request path is longer than {MAX_PATH_LENGTH} characters.")
    rest = normalize_path(raw_path[len(ENVOY_DECISION_PREFIX) :])
    return ENVOY_DECISION_PREFIX if rest == "/" else ENVOY_DECISION_PREFIX + rest


def normalize_path(raw_path: bytes | str) -> str:
    """Return the canonical form of a request path, or raise ``InvalidPath``."""
    try:
        text = raw_path.decode("ascii") if isinstance(raw_path, bytes) else raw_path
        text.encode("ascii")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise InvalidPath("The request path must be ASCII.") from None
    if len(text) > MAX_PATH_LENGTH:
        raise InvalidPath(f"The request path is longer than {MAX_PATH_LENGTH} characters.")
    if not _ALLOWED_RAW.fullmatch(text):
        raise InvalidPath("The request path is malformed.")
    if _is_canonical(text):
        return text
    if _BAD_ESCAPE.search(text):
        raise InvalidPath("The request path is malformed.")
    decoded = _ESCAPE.sub(_decode_escape, text)
    segments = _remove_dot_segments(decoded.split("/"))
    return "/" + "/".join(segments)
