"""Engagement composites: a degraded-tolerant overview and the close saga."""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Header, Path, Response

from app.api.deps import Authenticated, Authorized, Closer, KeyedAuthorized, Overview
from app.api.openapi import REPLAYED_HEADER, keyed_success, retrying_conflict
from app.api.routing import GuardedRoute
from app.api.schemas import Problem
from app.domain.engagements import CloseRequest, CloseResult, EngagementOverview
from app.workflows.idempotency import KEY_PATTERN, require_key

router = APIRouter(
    route_class=GuardedRoute, prefix="/v1/engagements/{engagement_id}", tags=["engagements"]
)
log = structlog.get_logger("gateway.composite")

EngagementPath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": True,
    "description": "Required: a retry with the same key and body gets the first result "
    "(draft-ietf-httpapi-idempotency-key-header); missing or malformed is a 400.",
    "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
}

ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 410, 413, 422, 429, 502, 503, 504)
}


@router.get(
    "/overview",
    response_model=EngagementOverview,
    responses=ERRORS,
    summary="Engagement overview (partial when a service is down)",
)
async def engagement_overview(
    engagement_id: EngagementPath, _grant: Authorized, overview: Overview
) -> EngagementOverview:
    """The engagement, a findings summary and its reports; failed parts listed in ``degraded``."""
    return await overview.overview(engagement_id)


CLOSE_CONFLICT = retrying_conflict(
    "Another close or a reopen of the engagement is running, or a request with this "
    "Idempotency-Key still is (both with Retry-After); or the engagement is already closed, "
    "or the key's close was undone by a reopen since"
)

CLOSED = keyed_success("The close's result (the first one, for a replayed key)", always=True)


@router.post(
    "/close",
    response_model=CloseResult,
    responses={**ERRORS, 200: CLOSED, 409: CLOSE_CONFLICT},
    summary="Close an engagement (saga, idempotent)",
    openapi_extra={"parameters": [IDEMPOTENCY_KEY]},
)
async def close_engagement(
    engagement_id: EngagementPath,
    body: CloseRequest,
    identity: Authenticated,
    _grant: KeyedAuthorized,
    closer: Closer,
    response: Response,
    # Documented as required (IDEMPOTENCY_KEY); a missing or malformed one is our 400 problem.
    idempotency_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> CloseResult:
    """Freeze findings, render the final report, close; undone in reverse on failure."""
    key = require_key(idempotency_key)
    result, replayed = await closer.close(engagement_id, body, key, identity.subject)
    response.headers[REPLAYED_HEADER] = "true" if replayed else "false"
    log.info("engagement_closed", engagement=engagement_id, replayed=replayed)
    return result
