"""RFC 9457 ``application/problem+json`` bodies, built in one place."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_type(code: str) -> str:
    """The stable ``type`` URI of a problem code (documented in app/api/docs/errors.md)."""
    return f"urn:authz-gateway:problem:{code}"


def problem_body(
    status: int, code: str, title: str, detail: str, corr_id: str | None, **extra: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": problem_type(code),
        "title": title,
        "status": status,
        "detail": detail,
        "corr_id": corr_id,
    }
    body.update(extra)
    return body


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    corr_id: str | None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body = problem_body(status, code, title, detail, corr_id, **extra)
    return Response(
        orjson.dumps(body), status_code=status, headers=headers, media_type=PROBLEM_CONTENT_TYPE
    )
