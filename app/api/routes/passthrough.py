"""Declarative pass-through routes, registered explicitly from configuration.

Each ``orchestration.passthrough`` entry becomes a real route (app-level
dependencies never run for unmatched paths, so nothing is left to a catch-all).
The guard authenticates like ``Authenticated`` but without reading the body:
the signature, its coverage and its key are verified from the headers, and the
body's ``Content-Digest`` is verified as the body streams upstream
(``app.orchestration.passthrough``). It then authorizes like ``Authorized``:
same engagement rule, same policy engine, on the normalised path and the method
unless the route names its own policy object and action.

This module does not use ``from __future__ import annotations``: each route's
guard is a closure, and FastAPI must see the evaluated ``Annotated`` types.
"""

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, FastAPI, Request
from starlette.responses import StreamingResponse

from app.api.deps import Services
from app.api.schemas import Problem
from app.authn.asgi import message_from_scope
from app.authn.base import Message
from app.authn.identity import Identity
from app.authn.verifier import Reason, SignatureVerifier
from app.authz.policy import GLOBAL_DOMAIN, PolicyEngine
from app.core.config import PassthroughRoute, ServiceSettings
from app.core.errors import AccessDenied, AuthenticationFailed, BadRequest, ConfigError
from app.orchestration.passthrough import declares_body, forward
from app.orchestration.propagation import CallContext, bind_call_context

decision_log = structlog.get_logger("gateway.decision")
_ENGAGEMENT = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 413, 502, 503, 504)
}


class _HeaderOnlyVerifier(SignatureVerifier):
    """The inbound verifier with the body digest left to the streaming check."""

    def _check_digest(self, message: Message, body: bytes, covered: tuple[str, ...]) -> None:
        return None


@dataclass(frozen=True, slots=True)
class PassthroughGrant:
    identity: Identity
    digest: str | None


def _authenticate(request: Request) -> Identity:
    verifier: SignatureVerifier = request.app.state.verifier
    message = message_from_scope(request.scope)
    try:
        if declares_body(request) and message.header("content-digest") is None:
            raise AuthenticationFailed(Reason.COMPONENT_MISSING.value)
        streaming = _HeaderOnlyVerifier(verifier.keyring, verifier.max_skew)
        identity = streaming.verify(message, b"")
    except AuthenticationFailed as exc:
        decision_log.info("decision", stage="authn", decision="deny", reason=exc.reason)
        raise
    structlog.contextvars.bind_contextvars(subject=identity.subject, key_id=identity.key_id)
    return identity


def _authorize(request: Request, route: PassthroughRoute, identity: Identity) -> str | None:
    params: Mapping[str, str] = request.path_params
    engagement = params.get("engagement_id", GLOBAL_DOMAIN)
    if engagement != GLOBAL_DOMAIN and not _ENGAGEMENT.match(engagement):
        raise BadRequest("The engagement id is malformed.")
    structlog.contextvars.bind_contextvars(engagement=engagement)
    obj = route.policy_object.format(**params) if route.policy_object else request.scope["path"]
    policy: PolicyEngine = request.app.state.policy
    decision = policy.decide(identity.subject, engagement, obj, route.action or request.method)
    if not decision.allowed:
        raise AccessDenied("The policy does not allow this request.")
    return None if engagement == GLOBAL_DOMAIN else engagement


def _guard(route: PassthroughRoute) -> Callable[[Request], Awaitable[PassthroughGrant]]:
    async def passthrough_guard(request: Request) -> PassthroughGrant:
        """Authenticate without reading the body, then authorize; 401/403 otherwise."""
        identity = _authenticate(request)
        engagement = _authorize(request, route, identity)
        traceparent = request.headers.get("traceparent")
        bind_call_context(CallContext(identity, engagement, traceparent))
        return PassthroughGrant(identity, request.headers.get("content-digest"))

    return passthrough_guard


def _endpoint(route: PassthroughRoute) -> Callable[..., Awaitable[StreamingResponse]]:
    guard = _guard(route)

    async def passthrough(
        request: Request, grant: Annotated[PassthroughGrant, Depends(guard)], services: Services
    ) -> StreamingResponse:
        return await forward(services.get(route.service), route, request, grant.digest)

    return passthrough


def register_passthrough_routes(
    app: FastAPI, routes: list[PassthroughRoute], services: Mapping[str, ServiceSettings]
) -> None:
    """Add one route per configured pass-through; an unknown service stops start-up."""
    for index, route in enumerate(routes):
        if route.service not in services:
            where = f"orchestration.passthrough[{index}]"
            raise ConfigError(f"{where}: service {route.service!r} is not configured")
        app.add_api_route(
            route.path,
            _endpoint(route),
            methods=list(route.methods),
            responses=ERRORS,
            summary=f"Pass-through to {route.service}",
            tags=["passthrough"],
            response_class=StreamingResponse,
        )
