"""What a stub saw: headers, and whether the gateway's outbound signature verified.

A stub built with a key ring verifies every request with the gateway's own
``SignatureVerifier`` (the profile is the same both ways; a nonce it saw
already is ``replayed``) and records the outcome beside the headers at
``GET /_seen`` (with ``fault`` naming the injected fault that answered instead,
else null); with ``require_signature`` it answers 401 to anything unsigned,
invalid or replayed, as a real downstream service would.

A request whose client was gone when the stub came to answer it (a caller that
gave up during an injected latency or hang, an upload cut short) is recorded all
the same, with ``client_gone`` true, and nothing answers it: a route does not act
on it. Its signature is checked over its body when the stub has it (always, for a
request without one), else it is ``body_incomplete``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starlette.requests import ClientDisconnect

from app.authn.asgi import message_from_scope
from app.authn.verifier import SignatureVerifier
from app.core.errors import AuthenticationFailed

NONCE_MEMORY = 10_000  # the signatures a stub remembers to spot a repeated one
IDEMPOTENCY_MEMORY = 10_000  # the keyed writes' answers a stub remembers to replay
_OUTCOME = "stub.signature"  # a request's outcome, kept in its scope: it may be listed twice


class SeenNonces:
    """The (key id, nonce) of the last signatures that verified, the oldest forgotten first."""

    def __init__(self, capacity: int = NONCE_MEMORY) -> None:
        self.capacity = capacity
        self._pairs: OrderedDict[tuple[str, str], None] = OrderedDict()

    def first_use(self, key_id: str, nonce: str) -> bool:
        """Whether this signature is new (it is remembered from now on)."""
        if (key_id, nonce) in self._pairs:
            return False
        self._pairs[(key_id, nonce)] = None
        if len(self._pairs) > self.capacity:
            self._pairs.popitem(last=False)
        return True

    def clear(self) -> None:
        self._pairs.clear()


class RememberedAnswers:
    """The answers to the last keyed writes, by (path, ``Idempotency-Key``), the oldest
    forgotten first: a long run's keys no longer grow a stub's memory without end."""

    def __init__(self, capacity: int = IDEMPOTENCY_MEMORY) -> None:
        self.capacity = capacity
        self._answers: OrderedDict[tuple[str, str], Any] = OrderedDict()

    def get(self, key: tuple[str, str]) -> Any:
        return self._answers.get(key)

    def put(self, key: tuple[str, str], answer: Any) -> None:
        self._answers[key] = answer
        if len(self._answers) > self.capacity:
            self._answers.popitem(last=False)

    def __len__(self) -> int:
        return len(self._answers)

    def clear(self) -> None:
        self._answers.clear()


def verify_gateway(
    verifier: SignatureVerifier | None,
    request: Request,
    body: bytes | None,
    nonces: SeenNonces | None = None,
) -> dict[str, Any]:
    """The signature outcome: ``valid`` with the subject, a reason code, or ``absent``;
    ``unverified`` when the stub holds no key to check one (it said ``absent``, as if the
    gateway had not signed); ``body_incomplete`` when the body (``None``) never arrived
    whole to check it against; ``replayed`` when ``nonces`` saw its nonce already (it
    said ``valid``: a signature sent twice went unnoticed)."""
    if "signature" not in request.headers:
        return {"signature": "absent"}
    if verifier is None:
        return {"signature": "unverified"}
    if body is None:
        return {"signature": "body_incomplete"}
    try:
        verified = verifier.verify_signature(message_from_scope(request.scope), body)
    except AuthenticationFailed as exc:
        return {"signature": exc.reason}
    identity = verified.identity
    fresh = nonces is None or nonces.first_use(verified.key_id, verified.nonce)
    outcome = "valid" if fresh else "replayed"
    return {"signature": outcome, "subject": identity.subject, "key_id": identity.key_id}


def _signature(request: Request, body: bytes | None) -> dict[str, Any]:
    """The request's outcome, checked once: a hung request listed again is not a replay."""
    state = request.scope.setdefault("state", {})
    if (known := state.get(_OUTCOME)) is not None:
        return dict(known)
    app_state = request.app.state
    outcome = verify_gateway(app_state.verifier, request, body, app_state.nonces)
    if body is not None:
        state[_OUTCOME] = outcome
    return outcome


async def record(request: Request, body: bytes | None = None) -> dict[str, Any]:
    """Record the request; 401 when the stub requires a valid gateway signature.

    Its body is read here unless given. When its client has gone, the request is
    recorded so and ``ClientDisconnect`` raised: the route has no one to answer.
    """
    client_gone = False
    if body is None:
        body, client_gone = await _read_body(request)
    entry = _entry(request, body, fault=None, client_gone=client_gone)
    if client_gone:
        raise ClientDisconnect
    if request.app.state.require_signature and entry["signature"] != "valid":
        raise HTTPException(401, "gateway signature required")
    return entry


def record_gone(request: Request) -> None:
    """Record a request whose client left while its route read the body (a cut upload)."""
    _entry(request, None, fault=None, client_gone=True)


def record_refusal(request: Request, reason: str) -> None:
    """Record a request the stub refused before a route or fault read its body whole
    (``reason``, as ``fault``: ``body_too_large``); its signature is not checked."""
    _entry(request, None, reason, client_gone=False)


async def record_fault(
    request: Request, fault: str | None, *, client_gone: bool = False
) -> bytes | None:
    """Record a request the fault injector answers instead of a route (``fault`` names
    the fault; ``None``: a request released from a hang after its client left); its
    body, or ``None`` when its client has gone (recorded so: there is no one to answer).
    """
    body, left = await _read_body(request)
    client_gone = client_gone or left
    _entry(request, body, fault, client_gone=client_gone)
    return None if client_gone else body


async def _read_body(request: Request) -> tuple[bytes | None, bool]:
    """The body, read whole, and whether the client has gone.

    A client gone before its body was read leaves none to read (the server reports
    the disconnect instead): a request that declared no body still had ``b""``; of
    one that did, the body is unknown (``None``).
    """
    try:
        return await request.body(), False
    except ClientDisconnect:
        headers = request.headers
        length = headers.get("content-length", "0").lstrip("0")
        no_body = "transfer-encoding" not in headers and not length
        return (b"" if no_body else None), True


def _entry(
    request: Request, body: bytes | None, fault: str | None, *, client_gone: bool
) -> dict[str, Any]:
    app: FastAPI = request.app
    entry = {
        "method": request.method,
        "path": request.url.path,
        "raw_path": request.scope["raw_path"].decode("latin-1"),
        "query": request.scope["query_string"].decode("latin-1"),
        "headers": _headers(request),
        "fault": fault,
        "client_gone": client_gone,
        **_signature(request, body),
    }
    app.state.seen.append(entry)
    return entry


def _headers(request: Request) -> dict[str, str]:
    """Every field as received; a repeated one's values joined by ``, `` (RFC 9110 5.3),
    as the signature base reads it: ``dict(request.headers)`` kept only the first."""
    fields: dict[str, str] = {}
    for name, value in request.headers.items():
        fields[name] = f"{fields[name]}, {value}" if name in fields else value
    return fields


def replay(request: Request) -> Any:
    """The stored answer for a repeated ``Idempotency-Key``, else ``None`` (also for a
    key older than the last ``IDEMPOTENCY_MEMORY`` remembered)."""
    key = request.headers.get("idempotency-key")
    return request.app.state.idempotent.get((request.url.path, key)) if key else None


def remember(request: Request, answer: Any) -> Any:
    key = request.headers.get("idempotency-key")
    if key:
        request.app.state.idempotent.put((request.url.path, key), answer)
    return answer
