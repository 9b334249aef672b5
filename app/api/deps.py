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
from app.authn.nonces import NonceStoreUnavailable
from app.authn.service import AuthnService
from app.authz.policy import GLOBAL_DOMAIN, Decision
from app.authz.source import ENGAGEMENT
from app.authz.store import PolicyStore
from app.core.errors import AccessDenied, AuthenticationFailed, BadRequest
from app.domain.identity import Identity
from app.downstream.client import ServiceRegistry
from app.downstream.propagation import CallContext, bind_call_context
from app.ops.metrics import count_decision, count_signature_failure
from app.ops.ratelimit import RateLimitGuard
from app.workflows.closing import CloseService
from app.workflows.findings import FindingsService
from app.workflows.overview import OverviewService
from app.workflows.passthrough import declares_body

decision_log = structlog.get_logger("gateway.decision")
_ENGAGEMENT = ENGAGEMENT


async def authenticate_request(
    request: Request, body: bytes, *, streamed: bool = False
) -> Identity:
    """Verify the signature and claim its nonce; log and count every refusal.

    401 with a logged reason when the signature is not accepted (replays
    included); 503 when the replay check cannot answer (fail closed).
    ``streamed``: the body is not read here; its digest is checked as it streams.
    """
    authn: AuthnService = request.app.state.authn
    message = message_from_scope(request.scope)
    try:
        identity = await authn.authenticate(message, body, streamed=streamed)
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


async def authenticate(request: Request) -> Identity:
    """The authentication guard of typed routes: the whole body is covered by the digest."""
    # A request that declares no body (no length, no chunking) has none: HTTP/1.1 framing.
    body = await request.body() if declares_body(request) else b""
    return await authenticate_request(request, body)


Authenticated = Annotated[Identity, Depends(authenticate)]


def request_engagement(request: Request) -> str | None:
    """The path's engagement id if well-formed, else ``None`` (routes without one too)."""
    engagement = request.path_params.get("engagement_id")
    return engagement if engagement is not None and _ENGAGEMENT.match(engagement) else None


async def spend_quota(request: Request, identity: Identity) -> dict[str, str]:
    """Spend one request of the subject's and the engagement's quota; 429 once spent."""
    guard: RateLimitGuard = request.app.state.rate_limit
    return await guard.spend(identity.subject, request_engagement(request))


async def limit_rate(request: Request, response: Response, identity: Identity) -> None:
    """The rate-limit step of ``authorize``; allowed responses carry ``RateLimit`` headers.

    Runs after authentication (the subject is known) and before the policy
    decision, so a flood is refused before it costs a decision. A malformed
    engagement id is not a key: only the subject's quota is spent, and
    ``authorize`` then answers 400.
    """
    guard: RateLimitGuard = request.app.state.rate_limit
    if guard.enabled:  # no configured limit: nothing to spend, no headers
        response.headers.update(await spend_quota(request, identity))


def decide_request(
    request: Request, identity: Identity, obj: str | None = None, action: str | None = None
) -> Decision:
    """Decide (subject + groups, engagement, object, action); 403 unless allowed.

    The object defaults to the normalised path and the action to the method. On an
    allow, the caller's identity is bound for the downstream calls that follow.
    """
    engagement = request.path_params.get("engagement_id", GLOBAL_DOMAIN)
    if engagement != GLOBAL_DOMAIN and not _ENGAGEMENT.match(engagement):
        raise BadRequest("The engagement id is malformed.")
    structlog.contextvars.bind_contextvars(engagement=engagement)
    policy: PolicyStore = request.app.state.policy
    decision = policy.decide(
        identity.subject,
        engagement,
        obj or request.scope["path"],
        action or request.method,
        identity.groups,
    )
    count_decision("allow" if decision.allowed else "deny", decision.reason)
    if not decision.allowed:
        raise AccessDenied("The policy does not allow this request.")
    scope_engagement = None if engagement == GLOBAL_DOMAIN else engagement
    bind_call_context(CallContext(identity, scope_engagement, request.headers.get("traceparent")))
    return decision


async def authorize(request: Request, response: Response, identity: Authenticated) -> Decision:
    """The engagement/RBAC guard: quota spent, then the normalised path and the method decided.

    One dependency (over ``Authenticated``) rather than one per step: each
    dependency FastAPI solves costs CPU on every request.
    """
    await limit_rate(request, response, identity)
    return decide_request(request, identity)


Authorized = Annotated[Decision, Depends(authorize)]


async def get_policy_store(request: Request) -> PolicyStore:
    store: PolicyStore = request.app.state.policy
    return store


Policies = Annotated[PolicyStore, Depends(get_policy_store)]


async def get_services(request: Request) -> ServiceRegistry:
    registry: ServiceRegistry = request.app.state.services
    return registry


Services = Annotated[ServiceRegistry, Depends(get_services)]


async def get_findings_service(request: Request) -> FindingsService:
    return FindingsService(request.app.state.services)


Findings = Annotated[FindingsService, Depends(get_findings_service)]


async def get_overview_service(request: Request, services: Services) -> OverviewService:
    deadline = request.app.state.settings.orchestration.overview_deadline_seconds
    return OverviewService(services, deadline)


Overview = Annotated[OverviewService, Depends(get_overview_service)]


async def get_close_service(request: Request, services: Services) -> CloseService:
    return CloseService(services, request.app.state.idempotency)


Closer = Annotated[CloseService, Depends(get_close_service)]
