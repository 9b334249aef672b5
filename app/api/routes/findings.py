"""Findings of an engagement: thin routes over ``FindingsService``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Response

from app.api.deps import Authenticated, Authorized, Findings
from app.api.routing import GuardedRoute
from app.api.schemas import Problem, relay
from app.domain.findings import Finding, FindingCreate, FindingList

router = APIRouter(
    route_class=GuardedRoute, prefix="/v1/engagements/{engagement_id}/findings", tags=["findings"]
)

EngagementPath = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
FindingPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")]

ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 410, 413, 422, 429, 502, 503, 504)
}


@router.get("", response_model=FindingList, responses=ERRORS, summary="List findings")
async def list_findings(
    engagement_id: EngagementPath, _grant: Authorized, findings: Findings
) -> Response:
    """Every finding recorded in the engagement."""
    return relay(await findings.list(engagement_id))


@router.post(
    "", response_model=Finding, status_code=201, responses=ERRORS, summary="Record a finding"
)
async def create_finding(
    engagement_id: EngagementPath,
    new: FindingCreate,
    identity: Authenticated,
    _grant: Authorized,
    findings: Findings,
) -> Response:
    """Record a new finding, attributed to the signed caller."""
    created = await findings.create(engagement_id, new, created_by=identity.subject)
    return relay(created, status_code=201)


@router.get("/{finding_id}", response_model=Finding, responses=ERRORS, summary="Get a finding")
async def get_finding(
    engagement_id: EngagementPath, finding_id: FindingPath, _grant: Authorized, findings: Findings
) -> Response:
    """One finding of the engagement."""
    return relay(await findings.get(engagement_id, finding_id))
