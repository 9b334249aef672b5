"""Declarative pass-through routes, registered explicitly from configuration.

Each ``orchestration.passthrough`` entry becomes a real route (app-level
dependencies never run for unmatched paths, so nothing is left to a catch-all).
The guard authenticates like ``Authenticated`` but without reading the body:
the signature, its coverage and its key are verified from the headers and the
nonce is claimed (replays refused), and the body's ``Content-Digest`` is
verified as the body streams upstream (``app.workflows.passthrough``). It
spends the rate-limit quota, then authorizes with the same function as
``Authorized`` (``decide_request``): same engagement rule, same policy, groups
included, on the normalised path and the method unless the route names its own
policy object and action.

This module does not use ``from __future__ import annotations``: each route's
guard is a closure, and FastAPI must see the evaluated ``Annotated`` types.
"""

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

import structlog
from fastapi import Depends, FastAPI, Request
from starlette.responses import StreamingResponse

from app.api.deps import Services, authenticate_request, decide_request, spend_quota
from app.api.schemas import Problem
from app.authn.verifier import Reason
from app.core.config import PassthroughRoute, ServiceSettings
from app.core.errors import AuthenticationFailed, ConfigError
from app.domain.identity import Identity
from app.ops.metrics import count_signature_failure
from app.workflows.passthrough import declares_body, forward

decision_log = structlog.get_logger("gateway.decision")
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 413, 502, 503, 504)
}


@dataclass(frozen=True, slots=True)
class PassthroughGrant:
    identity: Identity
    digest: str | None


async def _authenticate(request: Request) -> Identity:
    """Like ``Authenticated``, but the body's digest is left to the streaming check."""
    if declares_body(request) and request.headers.get("content-digest") is None:
        decision_log.info("decision", stage="authn", decision="deny", reason="component_missing")
        count_signature_failure(Reason.COMPONENT_MISSING.value)
        raise AuthenticationFailed(Reason.COMPONENT_MISSING.value)
    return await authenticate_request(request, b"", streamed=True)


def _authorize(request: Request, route: PassthroughRoute, identity: Identity) -> None:
    params: Mapping[str, str] = request.path_params
    obj = route.policy_object.format(**params) if route.policy_object else None
    decide_request(request, identity, obj, route.action)


def _guard(route: PassthroughRoute) -> Callable[[Request], Awaitable[PassthroughGrant]]:
    async def passthrough_guard(request: Request) -> PassthroughGrant:
        """Authenticate without reading the body, then authorize; 401/403 otherwise."""
        identity = await _authenticate(request)
        # RateLimit headers are not added to a streamed answer; the 429 still applies.
        await spend_quota(request, identity)
        _authorize(request, route, identity)
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
