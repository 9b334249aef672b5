"""The one exception handler set: everything expected becomes problem+json."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

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


async def handle_validation_error(request: Request, exc: Exception) -> Response:
    """422 listing where and what; input values are not echoed back."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [str(p) for p in err.get("loc", ())], "msg": str(err.get("msg", ""))}
        for err in exc.errors()
    ]
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
    return problem_response(
        exc.status_code,
        code,
        title,
        str(exc.detail),
        _corr_id(request),
        headers=dict(exc.headers or {}),
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, handle_gateway_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, handle_http_error)
