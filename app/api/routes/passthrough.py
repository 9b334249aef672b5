"""Declarative pass-through routes, registered explicitly from configuration.

Each ``orchestration.passthrough`` entry becomes a real route (app-level
dependencies never run for unmatched paths, so nothing is left to a catch-all).
Its guard is a ``Guard`` of its own: the same gate as ``Authorized`` (signature,
nonce, rate limit, the policy decision with the same engagement rule, groups
included), on the normalised path and the method unless the route names its own
policy object and action. The body is not read by the gate: its
``Content-Digest`` (required whenever a body is declared) is verified as the
body streams upstream (``app.workflows.passthrough``).

This module does not use ``from __future__ import annotations``: each route's
guard is an object of its own, and FastAPI must see the evaluated ``Annotated``
types.
"""

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from starlette.responses import Response, StreamingResponse

from app.api.deps import Services
from app.api.openapi import passthrough_operation
from app.api.pipeline import Guard, Target, admission_of, path_target
from app.api.schemas import Problem
from app.authn.identity import IDEMPOTENCY_KEY_HEADER
from app.authz.policy import Decision
from app.core.config import PassthroughRoute, ServiceSettings
from app.core.errors import ConfigError
from app.workflows.passthrough import PublicLocations, forward

# What the gateway answers, and what a service's 4xx becomes (app/downstream/refusals.py).
ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}}
    for status in (400, 401, 403, 404, 409, 410, 412, 413, 415, 416, 422, 429, 502, 503, 504)
}


def passthrough_guard(route: PassthroughRoute) -> Guard:
    """The route's guard: its configured policy object and action, else path and method."""

    def target(request: Request) -> Target:
        default = path_target(request)
        params: Mapping[str, str] = request.path_params
        obj = route.policy_object.format(**params) if route.policy_object else default.obj
        return Target(default.engagement, obj, route.action or default.action, default.scoped)

    # A forwarded Idempotency-Key is what the service deduplicates on, and the gateway's
    # own signature vouches for it: it must come signed, as on the keyed typed routes.
    forwarded = {name.lower() for name in route.forward_headers}
    keyed = (IDEMPOTENCY_KEY_HEADER,) if IDEMPOTENCY_KEY_HEADER in forwarded else ()
    return Guard(target, streamed=True, signed_if_present=keyed)


def _endpoint(
    route: PassthroughRoute, locations: PublicLocations, deadline_seconds: float
) -> Callable[..., Awaitable[Response]]:
    guard = passthrough_guard(route)

    async def passthrough(
        request: Request, _grant: Annotated[Decision, Depends(guard)], services: Services
    ) -> Response:
        message = admission_of(request).message  # the fields as authn read them
        client = services.get(route.service)
        return await forward(client, route, request, message, locations, deadline_seconds)

    return passthrough


def check_passthrough_services(
    routes: list[PassthroughRoute], services: Mapping[str, ServiceSettings]
) -> None:
    """``ConfigError`` naming the first route whose service is not configured."""
    for index, route in enumerate(routes):
        if route.service not in services:
            where = f"orchestration.passthrough[{index}]"
            raise ConfigError(f"{where}: service {route.service!r} is not configured")


def register_passthrough_routes(
    app: FastAPI,
    routes: list[PassthroughRoute],
    services: Mapping[str, ServiceSettings],
    deadline_seconds: float,
) -> None:
    """Add one route per configured pass-through; an unknown service stops start-up.

    ``deadline_seconds``: ``orchestration.downstream_deadline_seconds``, which bounds a
    bodiless request's wait for the answer's head (``app.workflows.passthrough``).
    """
    check_passthrough_services(routes, services)
    locations = PublicLocations(routes, services)  # a service's Location, mapped back
    for route in routes:
        endpoint = _endpoint(route, locations, deadline_seconds)
        for method in route.methods:  # one operation each: its own body and statuses
            app.add_api_route(
                route.path,
                endpoint,
                methods=[method],
                status_code=route.success_statuses(method)[0],
                responses=ERRORS,
                summary=f"Pass-through to {route.service}",
                tags=["passthrough"],
                response_class=StreamingResponse,
                openapi_extra=passthrough_operation(route, method),
            )
