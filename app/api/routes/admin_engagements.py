"""``POST /admin/engagements/{engagement}/reopen``: undo a close, for admins, guarded by the policy.

The path names the engagement ``{engagement}`` (not ``{engagement_id}``), so the
request is decided in domain ``*`` like every admin route: reopening is an
administrative act on the gateway, not a write inside the (closed, read-only)
engagement.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Path

from app.api.deps import Authenticated, Authorized, Reopener
from app.api.openapi import retrying_conflict
from app.api.routing import GuardedRoute
from app.api.schemas import Problem
from app.authz.source import ENGAGEMENT
from app.domain.engagements import ReopenRequest, ReopenResult

log = structlog.get_logger("gateway.admin")
router = APIRouter(route_class=GuardedRoute, prefix="/admin/engagements", tags=["admin"])

EngagementPath = Annotated[str, Path(pattern=ENGAGEMENT.pattern)]
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 413, 422, 502, 503, 504)
}


REOPEN_CONFLICT = retrying_conflict(
    "A close or another reopen of the engagement is running (with Retry-After); or the "
    "policy itself closes the engagement (a g3 line: remove it to reopen)"
)


@router.post(
    "/{engagement}/reopen",
    response_model=ReopenResult,
    responses={**ERRORS, 409: REOPEN_CONFLICT},
    summary="Reopen a closed engagement",
)
async def reopen_engagement(
    engagement: EngagementPath,
    body: ReopenRequest,
    identity: Authenticated,
    _grant: Authorized,
    reopener: Reopener,
) -> ReopenResult:
    """Reopen on the engagements service, unfreeze its findings, then writes are allowed again."""
    result = await reopener.reopen(engagement, body.reason, identity.subject)
    log.info("admin_engagement_reopen", engagement=engagement, was_closed_by=result.was_closed_by)
    return result
