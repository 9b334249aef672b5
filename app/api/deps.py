"""Guards and services, declared once as ``Annotated`` dependency aliases.

``Authenticated`` verifies the inbound RFC 9421 signature and yields the caller's
``Identity``; ``Authorized`` decides the request against the policy in force and
yields the ``Decision``. Both are ``async`` so what they bind into structlog's
contextvars stays visible to the rest of the request (sync dependencies run in a
thread pool, where bindings are lost).
"""

from __future__ import annotations

import re
from typing import Annotated

import structlog
from fastapi import Depends, Request

from app.authn.asgi import message_from_scope
from app.authn.identity import Identity
from app.authn.verifier import SignatureVerifier
from app.authz.policy import GLOBAL_DOMAIN, Decision, PolicyEngine
from app.core.errors import AccessDenied, AuthenticationFailed, BadRequest
from app.orchestration.client import ServiceRegistry
from app.orchestration.closing import CloseService
from app.orchestration.findings import FindingsService
from app.orchestration.overview import OverviewService
from app.orchestration.propagation import CallContext, bind_call_context

decision_log = structlog.get_logger("gateway.decision")
_ENGAGEMENT = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")


async def authenticate(request: Request) -> Identity:
    """Verify the request's signature; 401 with a logged reason otherwise."""
    verifier: SignatureVerifier = request.app.state.verifier
    body = await request.body()
    try:
        identity = verifier.verify(message_from_scope(request.scope), body)
    except AuthenticationFailed as exc:
        decision_log.info("decision", stage="authn", decision="deny", reason=exc.reason)
        raise
    structlog.contextvars.bind_contextvars(subject=identity.subject, key_id=identity.key_id)
    return identity


Authenticated = Annotated[Identity, Depends(authenticate)]


async def authorize(request: Request, identity: Authenticated) -> Decision:
    """Decide (subject, engagement, normalised path, method); 403 unless allowed."""
    engagement = request.path_params.get("engagement_id", GLOBAL_DOMAIN)
    if engagement != GLOBAL_DOMAIN and not _ENGAGEMENT.match(engagement):
        raise BadRequest("The engagement id is malformed.")
    structlog.contextvars.bind_contextvars(engagement=engagement)
    policy: PolicyEngine = request.app.state.policy
    decision = policy.decide(identity.subject, engagement, request.scope["path"], request.method)
    if not decision.allowed:
        raise AccessDenied("The policy does not allow this request.")
    scope_engagement = None if engagement == GLOBAL_DOMAIN else engagement
    bind_call_context(CallContext(identity, scope_engagement, request.headers.get("traceparent")))
    return decision


Authorized = Annotated[Decision, Depends(authorize)]


async def get_services(request: Request) -> ServiceRegistry:
    registry: ServiceRegistry = request.app.state.services
    return registry


Services = Annotated[ServiceRegistry, Depends(get_services)]


async def get_findings_service(services: Services) -> FindingsService:
    return FindingsService(services)


Findings = Annotated[FindingsService, Depends(get_findings_service)]


async def get_overview_service(request: Request, services: Services) -> OverviewService:
    deadline = request.app.state.settings.orchestration.overview_deadline_seconds
    return OverviewService(services, deadline)


Overview = Annotated[OverviewService, Depends(get_overview_service)]


async def get_close_service(request: Request, services: Services) -> CloseService:
    return CloseService(services, request.app.state.idempotency)


Closer = Annotated[CloseService, Depends(get_close_service)]
