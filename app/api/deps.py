"""Guards and services, declared once as ``Annotated`` dependency aliases.

``Authenticated`` verifies the inbound RFC 9421 signature and yields the caller's
``Identity``; ``Authorized`` decides the request against the policy in force and
yields the ``Decision``. Both are ``async`` so what they bind into structlog's
contextvars stays visible to the rest of the request (sync dependencies run in a
thread pool, where bindings are lost).
"""

from __future__ import annotations

from typing import Annotated

import structlog
from fastapi import Depends, Request, Response

from app.authn.asgi import message_from_scope
from app.authn.identity import Identity
from app.authn.nonces import NonceStoreUnavailable
from app.authn.service import AuthnService
from app.authz.policy import GLOBAL_DOMAIN, Decision
from app.authz.source import ENGAGEMENT
from app.authz.store import PolicyStore
from app.core.errors import AccessDenied, AuthenticationFailed, BadRequest
from app.ops.metrics import count_decision, count_signature_failure
from app.ops.ratelimit import RateLimitGuard
from app.orchestration.client import ServiceRegistry
from app.orchestration.findings import FindingsService

decision_log = structlog.get_logger("gateway.decision")
_ENGAGEMENT = ENGAGEMENT


async def authenticate(request: Request) -> Identity:
    """Verify the request's signature and claim its nonce.

    401 with a logged reason when the signature is not accepted (replays
    included); 503 when the replay check cannot answer (fail closed).
    """
    authn: AuthnService = request.app.state.authn
    body = await request.body()
    try:
        identity = await authn.authenticate(message_from_scope(request.scope), body)
    except AuthenticationFailed as exc:
        decision_log.info("decision", stage="authn", decision="deny", reason=exc.reason)
        count_signature_failure(exc.reason)
        raise
    except NonceStoreUnavailable:
        decision_log.warning(
            "decision", stage="authn", decision="deny", reason="replay_check_unavailable"
        )
        count_signature_failure("replay_check_unavailable")
        raise
    structlog.contextvars.bind_contextvars(subject=identity.subject, key_id=identity.key_id)
    return identity


Authenticated = Annotated[Identity, Depends(authenticate)]


async def limit_rate(request: Request, response: Response, identity: Authenticated) -> None:
    """Spend one request of the subject's and the engagement's quota; 429 once spent.

    Runs after authentication (the subject is known) and before the policy
    decision, so a flood is refused before it costs a decision. A malformed
    engagement id is not a key: only the subject's quota is spent, and
    ``authorize`` then answers 400. Allowed responses carry ``RateLimit`` headers.
    """
    engagement = request.path_params.get("engagement_id")
    if engagement is not None and not _ENGAGEMENT.match(engagement):
        engagement = None
    guard: RateLimitGuard = request.app.state.rate_limit
    response.headers.update(await guard.spend(identity.subject, engagement))


RateLimited = Annotated[None, Depends(limit_rate)]


async def authorize(request: Request, identity: Authenticated, _quota: RateLimited) -> Decision:
    """Decide (subject + groups, engagement, normalised path, method); 403 unless allowed."""
    engagement = request.path_params.get("engagement_id", GLOBAL_DOMAIN)
    if engagement != GLOBAL_DOMAIN and not _ENGAGEMENT.match(engagement):
        raise BadRequest("The engagement id is malformed.")
    structlog.contextvars.bind_contextvars(engagement=engagement)
    policy: PolicyStore = request.app.state.policy
    decision = policy.decide(
        identity.subject, engagement, request.scope["path"], request.method, identity.groups
    )
    count_decision("allow" if decision.allowed else "deny", decision.reason)
    if not decision.allowed:
        raise AccessDenied("The policy does not allow this request.")
    return decision


Authorized = Annotated[Decision, Depends(authorize)]


async def get_policy_store(request: Request) -> PolicyStore:
    store: PolicyStore = request.app.state.policy
    return store


Policies = Annotated[PolicyStore, Depends(get_policy_store)]


async def get_services(request: Request) -> ServiceRegistry:
    registry: ServiceRegistry = request.app.state.services
    return registry


Services = Annotated[ServiceRegistry, Depends(get_services)]


async def get_findings_service(services: Services) -> FindingsService:
    return FindingsService(services)


Findings = Annotated[FindingsService, Depends(get_findings_service)]
