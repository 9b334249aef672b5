"""The one exception handler set: everything expected becomes problem+json."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from app.core.errors import DownstreamError, GatewayError
from app.core.logging import get_logger
from app.core.problems import problem_response
from app.core.scope import ERROR_CODE_KEY

log = get_logger("gateway.errors")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "bad_request"}


def _corr_id(request: Request) -> str | None:
    return getattr(request.state, "corr_id", None)


async def handle_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    extra: dict[str, str] = {}
    if isinstance(exc, DownstreamError):
        extra["service"] = exc.service
    log.info("request_rejected", status=exc.status_code, code=exc.code, **extra)
    request.scope.setdefault("state", {})[ERROR_CODE_KEY] = exc.code
    return problem_response(
        exc.status_code,
        exc.code,
        exc.title,
        exc.detail,
        _corr_id(request),
        headers=exc.headers,
        **extra,
    )


# An undeclared key is named in ``loc`` only when it looks like a field name; a longer
# message is cut. Both bound the answer and the log line whatever the body held.
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")
UNDECLARED_KEY = "<undeclared key>"
MAX_MESSAGE = 300


def _public_error(err: Mapping[str, Any]) -> dict[str, Any]:
    """One validation error as the caller sees it: where, and what, without the input.

    pydantic's messages name no input value except a discriminator's unknown tag
    (replaced by the expected tags); the gateway's own validators name none either.
    An extra key is part of ``loc`` (the caller's own text): kept when it is a
    plausible field name, else replaced.
    """
    loc = [str(p) for p in err.get("loc", ())]
    if err.get("type") == "extra_forbidden" and loc and not _FIELD_NAME.fullmatch(loc[-1]):
        loc[-1] = UNDECLARED_KEY
    msg = str(err.get("msg", ""))
    if err.get("type") == "union_tag_invalid":
        ctx = err.get("ctx") or {}
        expected = ctx.get("expected_tags", "")
        msg = f"{ctx.get('discriminator', 'the tag')} must be one of: {expected}"
    if len(msg) > MAX_MESSAGE:
        msg = msg[: MAX_MESSAGE - 1] + "…"
    return {"loc": [part[:128] for part in loc], "msg": msg}


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    """422 listing where and what; input values are not echoed back."""
    assert isinstance(exc, RequestValidationError)
    errors = [_public_error(err) for err in exc.errors()]
    log.info("request_rejected", status=422, code="validation_error", errors=errors)
    return problem_response(
        422,
        "validation_error",
        "Request validation failed",
        "The request does not match the schema.",
        _corr_id(request),
        errors=errors,
    )


async def handle_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    title = code.replace("_", " ").capitalize()
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request)
    return problem_response(
        exc.status_code,
        code,
        title,
        str(exc.detail),
        _corr_id(request),
        headers=headers,
    )


def allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (RFC 9110 section 15.5.6).

    Starlette answers a 405 from the first route whose path matched and names that
    route's methods only: ``PUT …/findings`` said ``Allow: GET`` although ``POST`` is
    served there by the next route.
    """
    scope = {**request.scope, "method": "\x00"}  # a method no route takes: path only
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, handle_gateway_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
