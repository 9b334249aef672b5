"""The admin API: the policy in force, a gated reload, explain and queries. Guarded by the policy.

Admin routes have no engagement, so they are decided in domain ``*``; the
shipped policy grants ``/admin/*`` to the global ``security_admin`` role.
Explain and the queries scan the policy (milliseconds at 100k lines), so they
run in a worker thread, off the event loop, on the engine in force when asked.
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import structlog
from fastapi import APIRouter, Body, Response

from app.api.admin_query_schemas import (
    EngagementPermissions,
    ExplainRequest,
    ExplainResponse,
    PolicyQuery,
    WhatCanOut,
    WhatCanQuery,
    WhoCanOut,
)
from app.api.admin_schemas import PolicyStatusOut, ReloadRequest, ReloadResultOut
from app.api.deps import Authorized, Policies
from app.api.routing import GuardedRoute
from app.api.schemas import Problem
from app.authz.explain import explain
from app.authz.query import engagements_for, what_can, who_can
from app.authz.store import PolicyStore
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
    """Decide a hypothetical request on the policy and engagement state in force, and teach."""
    engine, dom = store.current, request.domain
    closed = store.engagements.decision_fact(dom)
    answer = await asyncio.to_thread(
        explain,
        engine,
        request.subject,
        request.groups,
        (dom, request.path, request.method),
        closed,
    )
    log.info(
        "admin_policy_explain", explained_subject=request.subject, decision=answer.decision.allowed
    )
    return ExplainResponse.of(answer)


@router.post(
    "/query",
    response_model=WhoCanOut | WhatCanOut,
    responses=ERRORS,
    summary="Who may do this, what may this subject do",
)
async def query_policy(
    query: Annotated[PolicyQuery, Body()], _grant: Authorized, store: Policies
) -> Response:
    """``who_can``: the principals allowed a request; ``what_can``: a subject's permissions.

    The answer is computed, built and serialised off the event loop: with a large
    policy a who-can answer is megabytes (100k grants: 19 MB), and building it on
    the loop stalled every request of the process for seconds.
    """
    body = await asyncio.to_thread(_answer, store, query)
    log.info("admin_policy_query", query=query.query, bytes=len(body))
    return Response(body, media_type="application/json")


def _answer(store: PolicyStore, query: PolicyQuery) -> bytes:
    """The query's JSON answer (a ``WhoCanOut`` or ``WhatCanOut``), in a worker thread."""
    if isinstance(query, WhatCanQuery):
        answer: WhoCanOut | WhatCanOut = _what_can(store, query)
    else:
        request = (query.domain, query.path, query.action)
        closed = store.engagements.decision_fact(query.domain)
        answer = WhoCanOut.of(who_can(store.current, request, closed))
    return answer.model_dump_json().encode()


def _what_can(store: PolicyStore, query: WhatCanQuery) -> WhatCanOut:
    engine = store.current
    out = []
    closed = store.engagements.closed()
    listed = engagements_for(engine, query.subject, query.groups, query.engagement, closed)
    for label, engagement in listed:
        fact = store.engagements.decision_fact(engagement)
        answer = what_can(engine, query.subject, query.groups, engagement, fact)
        out.append(EngagementPermissions.of(label, answer))
    return WhatCanOut(subject=query.subject, groups=query.groups, revision=engine.revision,
                      engagements=out)  # fmt: skip
