"""The OpenAPI document: FastAPI's, completed with what the gateway really does.

- **Signing**: the RFC 9421 signature is declared as security schemes (the
  ``Signature``, ``Signature-Input`` and ``X-Auth-Subject`` headers, all three
  required together) on every operation whose route runs a ``Guard``
  (``app.api.routing``); the others (probes, metrics) say ``security: []``; and
  ``info.description`` says how to sign, linking to the full profile.
- **Errors**: every error the gateway answers is ``application/problem+json``
  (``Problem``): FastAPI's own 422 description is replaced by it, and the statuses
  any route can answer are listed on each (400 and 404 from the edge; 401, 403,
  429 and 503 on signed routes; 408 and 413 where there is a body). A route's 409
  that can mean "a run is in progress" (``retrying_conflict``) declares its
  ``Retry-After``, sent only then; a keyed operation's success (``keyed_success``)
  declares ``Idempotent-Replayed``.
- **Pass-through routes** (``passthrough_operation``): their path parameters,
  request body and success statuses, which FastAPI cannot see in a generic
  endpoint.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from app.api.routing import GuardedRoute
from app.api.schemas import Problem
from app.authz.source import ENGAGEMENT
from app.core.config import PassthroughRoute

SIGNING_PAGE = "/docs/signing.md"
PROBLEM = "application/problem+json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_PLACEHOLDER = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
# One path segment as a client means it (its library percent-encodes it): a value
# the edge refuses or normalises away is a 400 or a 404, both documented.
_SEGMENT: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255}

DESCRIPTION = f"""
The one door between upstream identity proxies and internal services.

**Every operation except the health probes and `/metrics` must be signed** by a
trusted upstream proxy with [RFC 9421 HTTP Message Signatures]\
(https://www.rfc-editor.org/rfc/rfc9421) (`hmac-sha256`, a shared key per proxy):

- `X-Auth-Subject`: the authenticated person (and `X-Auth-Groups`, comma-separated,
  if any);
- `Content-Digest`: [RFC 9530](https://www.rfc-editor.org/rfc/rfc9530) `sha-256`
  (or `sha-512`) of the exact body, when there is one (or one is declared);
- `Signature-Input`: the covered components `"@method" "@path"`, `"@query"` when
  there is a query, `"content-digest"` when there is a body, `"x-auth-subject"`,
  `"x-auth-groups"` when sent, and `"idempotency-key"` when sent to an operation
  that acts on it (a finding create, the close, a pass-through route that forwards
  it); parameters `created`, `keyid`, `nonce` and `alg="hmac-sha256"` (optionally
  `expires`);
- `Signature`: the HMAC of the signature base.

A signature is accepted within the skew window (300 s by default) and each
`(keyid, nonce)` once. Anything else is `401` problem+json; the reason is only in
the gateway's decision log. The full profile, with test vectors and a reference
signer (`gateway sign`): [signing.md]({SIGNING_PAGE}).

Every error is `application/problem+json` (RFC 9457) carrying the request's
`corr_id`, which is also echoed in `X-Request-ID`.
"""

_SCHEMES: dict[str, dict[str, Any]] = {
    "signature": {
        "type": "apiKey",
        "in": "header",
        "name": "Signature",
        "description": f"RFC 9421 signature (`hmac-sha256`) of the proxy; see [signing.md]"
        f"({SIGNING_PAGE}).",
    },
    "signatureInput": {
        "type": "apiKey",
        "in": "header",
        "name": "Signature-Input",
        "description": "The covered components and parameters (`created`, `keyid`, `nonce`, "
        f"`alg`) of `Signature`; see [signing.md]({SIGNING_PAGE}).",
    },
    "subject": {
        "type": "apiKey",
        "in": "header",
        "name": "X-Auth-Subject",
        "description": "The caller's identity, trusted only when covered by the signature "
        "(with `X-Auth-Groups` when sent, and `Content-Digest` when there is a body).",
    },
}
SIGNED: list[dict[str, list[str]]] = [{name: [] for name in _SCHEMES}]
_EDGE_ERRORS = {
    "400": "Malformed path, engagement id or header",
    "404": "No such route or resource",
}
_SIGNED_ERRORS = {
    "401": "Not signed by a trusted proxy",
    "403": "The policy does not allow this request",
    "429": "A rate limit is spent (Retry-After)",
    "503": "The replay check or a needed store cannot answer (Retry-After)",
}
_BODY_ERRORS = {
    "408": "The body stalled or arrived too slowly (Connection: close)",
    "413": "The body is too large",
    "415": "The body's Content-Type is not one the route takes",
}


def install_openapi(app: FastAPI) -> None:
    """Serve FastAPI's schema completed by ``complete`` (computed once, as FastAPI caches)."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        if "securitySchemes" not in schema.setdefault("components", {}):
            complete(schema, public_operations(app))
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented extension point


def public_operations(app: FastAPI) -> set[tuple[str, str]]:
    """``(path, method)`` of every documented route that declares no guard."""
    public: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):  # included routers too, with prefixes
        route = context.original_route
        guarded = isinstance(route, GuardedRoute) and route.guard is not None
        if isinstance(route, APIRoute) and not guarded:
            public |= {(str(context.path), method.lower()) for method in context.methods or ()}
    return public


def complete(schema: dict[str, Any], public: set[tuple[str, str]]) -> None:
    """Add security, and make every error response a documented problem+json."""
    components = schema["components"]
    components["securitySchemes"] = _SCHEMES
    components.setdefault("schemas", {}).setdefault("Problem", Problem.model_json_schema())
    schema["security"] = SIGNED
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if (path, method) in public:
                operation["security"] = []
            _complete_errors(operation)
    for unused in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(unused, None)


_STRING = {"schema": {"type": "string"}}
_REQUEST_ID = {"X-Request-ID": {**_STRING, "description": "the request's corr_id"}}
# RFC 9651 fields of draft-ietf-httpapi-ratelimit-headers (operations.md, rate limits).
_RATE_LIMIT = {
    "RateLimit": {**_STRING, "description": "what is left of each configured limit"},
    "RateLimit-Policy": {**_STRING, "description": "each configured limit"},
}
# draft-ietf-httpapi-idempotency-key-header: a keyed create or close says whether it replayed.
REPLAYED_HEADER = "Idempotent-Replayed"
_RETRY_AFTER = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
_RETRY_AFTER_CONFLICT = {
    "Retry-After": {
        "schema": {"type": "integer", "minimum": 1},
        "description": "seconds; sent only with a conflict that ends by itself (a run in "
        "progress): send the request again after it",
    }
}


def retrying_conflict(description: str) -> dict[str, object]:
    """A route's 409 ``responses`` entry whose conflict may end by itself: with ``Retry-After``."""
    return {
        "model": Problem,
        "content": {PROBLEM: {}},
        "description": description,
        "headers": _RETRY_AFTER_CONFLICT,
    }


def keyed_success(description: str, *, always: bool) -> dict[str, object]:
    """A keyed operation's success ``responses`` entry: with its ``Idempotent-Replayed``.

    ``always``: the operation requires the key, so every success carries the header;
    else only a success of a request that sent one.
    """
    when = "always" if always else "only when the request sent an Idempotency-Key"
    header = {
        "schema": {"type": "string", "enum": ["true", "false"]},
        "description": f"true when this is the stored result of an earlier request with the "
        f"same key (no service was called), false the first time; sent {when}",
    }
    return {"description": description, "headers": {REPLAYED_HEADER: header}}


def _complete_errors(operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    expected: dict[str, str] = {}
    signed = operation.get("security") != []
    if signed:
        expected |= _EDGE_ERRORS | _SIGNED_ERRORS
        if "requestBody" in operation:
            expected |= _BODY_ERRORS
    for status, description in expected.items():
        responses.setdefault(status, {"description": description})
    for status, response in responses.items():
        if status.isdigit() and int(status) >= 400:
            _as_problem(status, response)
        _add_headers(status, response, signed)


def _add_headers(status: str, response: dict[str, Any], signed: bool) -> None:
    """The headers the gateway sends on this answer (index.md conventions)."""
    headers: dict[str, Any] = response.setdefault("headers", {})
    added = dict(_REQUEST_ID)
    if signed and (status.startswith("2") or status == "429"):
        added |= _RATE_LIMIT  # only when a rate limit is configured
    if status in ("429", "503"):
        added |= _RETRY_AFTER
    for name, header in added.items():
        headers.setdefault(name, header)


def _as_problem(status: str, response: dict[str, Any]) -> None:
    """problem+json with the Problem schema, unless it documents another body (readiness)."""
    content: dict[str, Any] = response.get("content", {})
    json_schema = content.get("application/json", {}).get("schema")
    if json_schema not in (None, _PROBLEM_REF) and status != "422":
        return
    response["content"] = {PROBLEM: {"schema": _PROBLEM_REF}}
    if status == "422":
        response["description"] = "The body or parameters do not match the schema"


def passthrough_operation(route: PassthroughRoute, method: str) -> dict[str, Any]:
    """``openapi_extra`` of one pass-through method: parameters, body, success statuses."""
    parameters = [
        {
            "name": name,
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": ENGAGEMENT.pattern}
            if name == "engagement_id"
            else _SEGMENT,
        }
        for name in _PLACEHOLDER.findall(route.path)
    ]
    streamed = {"description": f"The {route.service} service's answer, streamed as it sent it"}
    extra: dict[str, Any] = {
        "parameters": parameters,
        "responses": {
            str(status): {**streamed, "content": {"*/*": {}}}
            for status in route.success_statuses(method)
        },
    }
    if method in ("POST", "PUT", "PATCH"):
        extra["requestBody"] = {
            "description": "Forwarded as it is sent, streamed; its Content-Digest must be signed",
            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
        }
    return extra
