"""Findings of an engagement: thin routes over ``FindingsService``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Response

from app.api.deps import Authenticated, Authorized, Findings, KeyedAuthorized
from app.api.openapi import REPLAYED_HEADER, keyed_success, retrying_conflict
from app.api.routing import GuardedRoute
from app.api.schemas import Problem, relay
from app.core.logging import get_logger
from app.domain.findings import Finding, FindingCreate, FindingList
from app.workflows.idempotency import KEY_PATTERN, require_key

router = APIRouter(
    route_class=GuardedRoute, prefix="/v1/engagements/{engagement_id}/findings", tags=["findings"]
)

log = get_logger("gateway.findings")
IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Optional: a retry with the same key and body gets the first finding "
    "(201, Idempotent-Replayed: true) instead of a second one "
    "(draft-ietf-httpapi-idempotency-key-header); malformed is a 400.",
    "schema": {"type": "string", "pattern": KEY_PATTERN.pattern},
}
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


CREATE_CONFLICT = retrying_conflict(
    "A request with this Idempotency-Key is still in progress (with Retry-After); or the "
    "findings service refused the write (the engagement's findings are frozen)"
)

CREATED = keyed_success("The finding (the first one, for a replayed key)", always=False)


@router.post(
    "",
    response_model=Finding,
    status_code=201,
    responses={**ERRORS, 201: CREATED, 409: CREATE_CONFLICT},
    summary="Record a finding",
    openapi_extra={"parameters": [IDEMPOTENCY_KEY]},
)
async def create_finding(
    engagement_id: EngagementPath,
    new: FindingCreate,
    identity: Authenticated,
    _grant: KeyedAuthorized,
    findings: Findings,
    # Documented by IDEMPOTENCY_KEY; a malformed one is our 400 problem, not FastAPI's 422.
    idempotency_key: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """Record a new finding, attributed to the signed caller (once per Idempotency-Key)."""
    key = None if idempotency_key is None else require_key(idempotency_key)
    created, replayed = await findings.create(
        engagement_id, new, created_by=identity.subject, key=key
    )
    response = relay(created, status_code=201)
    if key is not None:
        response.headers[REPLAYED_HEADER] = "true" if replayed else "false"
    log.info("finding_created", engagement=engagement_id, keyed=key is not None, replayed=replayed)
    return response


@router.get("/{finding_id}", response_model=Finding, responses=ERRORS, summary="Get a finding")
async def get_finding(
    engagement_id: EngagementPath, finding_id: FindingPath, _grant: Authorized, findings: Findings
) -> Response:
    """One finding of the engagement."""
    return relay(await findings.get(engagement_id, finding_id))
