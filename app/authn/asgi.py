"""Adapter from an ASGI request to a signature ``Message``."""

from __future__ import annotations

from starlette.types import Scope

from app.authn.base import Message
from app.core.scope import SIGNED_PATH_KEY


def message_from_scope(scope: Scope) -> Message:
    """View an ASGI HTTP scope as a signature ``Message``."""
    headers: dict[str, list[str]] = {}
    for name, value in scope["headers"]:
        headers.setdefault(name.decode("latin-1").lower(), []).append(value.decode("latin-1"))
    state = scope.get("state", {})
    path = state.get(SIGNED_PATH_KEY) or scope.get("raw_path", b"").decode("latin-1")
    host = headers.get("host", [""])[0]
    return Message(
        method=scope["method"],
        path=path or scope["path"],
        query=scope.get("query_string", b"").decode("latin-1"),
        scheme=scope.get("scheme", "http"),
        authority=host,
        headers=headers,
    )
