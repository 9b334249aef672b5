"""The admin API: the policy in force, a gated reload, and explain. Guarded by the policy.

Admin routes have no engagement, so they are decided in domain ``*``; the
shipped policy grants ``/admin/*`` to the global ``security_admin`` role.
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import APIRouter, Body

from app.api.admin_schemas import (
    ExplainRequest,
    ExplainResponse,
    PolicyStatusOut,
    ReloadRequest,
    ReloadResultOut,
)
from app.api.deps import Authorized, Policies
from app.api.routing import GuardedRoute
from app.api.schemas import Problem
from app.core.errors import PolicyRejected

log = structlog.get_logger("gateway.admin")
router = APIRouter(route_class=GuardedRoute, prefix="/admin/policy", tags=["admin"])

ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 413, 422)
}


@router.get("", response_model=PolicyStatusOut, responses=ERRORS, summary="Policy in force")
async def policy_status(_grant: Authorized, store: Policies) -> PolicyStatusOut:
    """Revision, load time, files and the last rejected reload, if any."""
    return PolicyStatusOut.of(store.status)


@router.post(
    "/reload", response_model=ReloadResultOut, responses=ERRORS, summary="Reload the policy"
)
async def reload_policy(
    _grant: Authorized,
    store: Policies,
    body: Annotated[ReloadRequest | None, Body()] = None,
) -> ReloadResultOut:
    """Parse, lint, test and swap; a rejected policy is a 422 and the last good one stays."""
    reason = (body or ReloadRequest()).reason
    result = await store.reload(reason)
    log.info("admin_policy_reload", outcome=result.outcome, policy_revision=result.revision)
    if result.outcome == "rejected":
        raise PolicyRejected(f"The last good policy stays in force. {result.error}")
    return ReloadResultOut.of(result)


@router.post(
    "/explain", response_model=ExplainResponse, responses=ERRORS, summary="Explain a decision"
)
async def explain_decision(
    request: ExplainRequest, _grant: Authorized, store: Policies
) -> ExplainResponse:
    """Decide a hypothetical request on the policy in force, without acting on it."""
    decision = store.current.explain(
        request.subject, request.engagement, request.path, request.method, request.groups
    )
    log.info("admin_policy_explain", explained_subject=request.subject, decision=decision.allowed)
    return ExplainResponse.of(decision)
