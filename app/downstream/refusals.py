"""What a service's 4xx answer means to the gateway's caller: the one table.

A status keeps its meaning only where the caller can act on it; everything else
a service refuses is the gateway's fault (it asked wrongly, or the two disagree
on identity or configuration) and is a ``502 bad_gateway`` that names the service.
The service's body is never relayed, on any route: the caller gets the gateway's
problem+json with a generic detail. Typed routes build their requests from
validated models, so a refusal of the request's *content* (400, 413, 415, 422) is
the gateway's fault there; pass-through routes forward the caller's body and
conditions untouched, so there those statuses are the caller's. The same table is
in ``app/api/docs/resilience.md`` (a test reads it from there).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import httpx
import structlog

from app.core.errors import (
    BadRequest,
    Conflict,
    DownstreamError,
    GatewayError,
    Gone,
    NotFound,
    PayloadTooLarge,
    PreconditionFailed,
    RangeNotSatisfiable,
    TooManyRequests,
    UnprocessableContent,
    UnsupportedMediaType,
)

log = structlog.get_logger("gateway.downstream")

_DELAY_SECONDS = re.compile(r"^[0-9]{1,6}$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/[0-9]{1,20}$")


@dataclass(frozen=True, slots=True)
class Meaning:
    """The caller-facing error of one downstream status, and on which routes it holds."""

    error: type[GatewayError]
    detail: str
    passthrough_only: bool = False
    kept_header: str | None = None
    kept_pattern: re.Pattern[str] | None = None


MEANINGS: dict[int, Meaning] = {
    400: Meaning(BadRequest, "The {service} service refused the request as malformed.", True),
    404: Meaning(NotFound, "The requested resource does not exist."),
    409: Meaning(Conflict, "The request conflicts with the resource's current state."),
    410: Meaning(Gone, "The requested resource no longer exists."),
    412: Meaning(PreconditionFailed, "A precondition of the request does not hold.", True),
    413: Meaning(PayloadTooLarge, "The {service} service refused the body as too large.", True),
    415: Meaning(
        UnsupportedMediaType, "The {service} service does not take this content type.", True
    ),
    416: Meaning(
        RangeNotSatisfiable,
        "The requested range is not satisfiable.",
        True,
        "content-range",
        _UNSATISFIED_RANGE,
    ),
    422: Meaning(UnprocessableContent, "The {service} service could not process the body.", True),
    429: Meaning(
        TooManyRequests,
        "The {service} service is limiting requests; retry later.",
        False,
        "retry-after",
        _DELAY_SECONDS,
    ),
}


def client_error(
    service: str, response: httpx.Response, *, passthrough: bool = False
) -> GatewayError | None:
    """The error the caller gets for a 4xx answer (``None`` below 400); never its body."""
    status = response.status_code
    if status < 400:
        return None
    meaning = MEANINGS.get(status)
    if meaning is None or (meaning.passthrough_only and not passthrough):
        log.warning("downstream_rejected", service=service, status=status)
        return DownstreamError(service, f"The {service} service rejected the request.")
    headers: dict[str, str] = {}
    if meaning.kept_header and meaning.kept_pattern:
        value = response.headers.get(meaning.kept_header, "")
        if meaning.kept_pattern.fullmatch(value):
            headers[meaning.kept_header] = value
    return meaning.error(meaning.detail.format(service=service), headers=headers)
