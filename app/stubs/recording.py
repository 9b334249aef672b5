"""What a stub saw: headers, and whether the gateway's outbound signature verified.

A stub built with a key ring verifies every request with the gateway's own
``SignatureVerifier`` (the profile is the same both ways) and records the
outcome beside the headers at ``GET /_seen`` (with ``fault`` naming the injected
fault that answered instead, else null); with ``require_signature`` it answers
401 to anything unsigned or invalid, as a real downstream service would.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, HTTPException, Request

from app.authn.asgi import message_from_scope
from app.authn.verifier import SignatureVerifier
from app.core.errors import AuthenticationFailed


def verify_gateway(
    verifier: SignatureVerifier | None, request: Request, body: bytes
) -> dict[str, Any]:
    """The signature outcome: ``valid`` with the subject, a reason code, or ``absent``."""
    if verifier is None or "signature" not in request.headers:
        return {"signature": "absent"}
    try:
        identity = verifier.verify(message_from_scope(request.scope), body)
    except AuthenticationFailed as exc:
        return {"signature": exc.reason}
    return {"signature": "valid", "subject": identity.subject, "key_id": identity.key_id}


async def record(request: Request, body: bytes | None = None) -> dict[str, Any]:
    """Record the request; 401 when the stub requires a valid gateway signature."""
    entry = await _entry(request, body, fault=None)
    if request.app.state.require_signature and entry["signature"] != "valid":
        raise HTTPException(401, "gateway signature required")
    return entry


async def record_fault(request: Request, fault: str) -> bytes:
    """Record a request a fault answers instead of a route (``fault`` names it); its body."""
    body = await request.body()
    await _entry(request, body, fault)
    return body


async def _entry(request: Request, body: bytes | None, fault: str | None) -> dict[str, Any]:
    app: FastAPI = request.app
    if body is None:
        body = await request.body()
    entry = {
        "method": request.method,
        "path": request.url.path,
        "raw_path": request.scope["raw_path"].decode("latin-1"),
        "headers": dict(request.headers),
        "fault": fault,
        **verify_gateway(app.state.verifier, request, body),
    }
    app.state.seen.append(entry)
    return entry


def replay(request: Request) -> Any:
    """The stored answer for a repeated ``Idempotency-Key``, else ``None``."""
    key = request.headers.get("idempotency-key")
    return request.app.state.idempotent.get((request.url.path, key)) if key else None


def remember(request: Request, answer: Any) -> Any:
    key = request.headers.get("idempotency-key")
    if key:
        request.app.state.idempotent[(request.url.path, key)] = answer
    return answer
