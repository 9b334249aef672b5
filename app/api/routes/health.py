"""Liveness and readiness; outside the signature check by design."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.routing import GuardedRoute
from app.api.schemas import Health, Readiness, ReadinessCheck
from app.authn.service import AuthnService
from app.authz.store import PolicyStore
from app.downstream.client import ServiceRegistry
from app.ops.runtime import redis_health

router = APIRouter(route_class=GuardedRoute, tags=["health"])

# The services the typed routes call, and which routes answer 503 without them.
ROUTE_SERVICES: dict[str, tuple[str, ...]] = {
    "engagements": ("overview", "close", "admin reopen"),
    "findings": ("findings", "overview", "close"),
    "reports": ("overview", "close"),
}


def policy_check(store: PolicyStore) -> ReadinessCheck:
    """The policy in force; a rejected reload is reported, not made fatal.

    The gateway keeps serving the last good policy, which is correct behaviour,
    so readiness stays ok: failing it would pull every instance out of service
    over one bad edit. The detail says the reload failed and why.
    """
    status = store.status
    detail = f"revision {status.revision}"
    if status.last_error is not None:
        lines = status.last_error.message.splitlines() or [""]
        summary = lines[0].rstrip(":")
        more = " (every failure: GET /admin/policy)" if len(lines) > 1 else ""
        detail += f"; last reload rejected, last good policy kept: {summary}{more}"
    return ReadinessCheck(name="policy", ok=True, detail=detail)


def engagement_state_check(store: PolicyStore) -> ReadinessCheck:
    """Closed engagements known: loaded from Redis, or (in memory) asked of the service.

    Until then the gateway could decide a closed engagement as open, so it is
    not ready (fail closed); it keeps retrying in the background.
    """
    state = store.engagements
    kind = "shared through Redis" if state.shared else "in this process"
    detail = f"{len(state.closed())} closed, {kind}"
    if not state.synced:
        detail = f"not loaded yet ({state.last_error or 'first load pending'})"
    elif state.last_error:
        detail += f"; last error: {state.last_error}"
    return ReadinessCheck(name="engagement_state", ok=state.synced, detail=detail)


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz() -> Health:
    """The process is up and serving."""
    return Health()


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def readyz(request: Request) -> JSONResponse:
    """Ready when the policy, the keys, the replay store and the shared state can serve."""
    policy: PolicyStore = request.app.state.policy
    services: ServiceRegistry = request.app.state.services
    checks = [
        policy_check(policy),
        engagement_state_check(policy),
    ]
    authn: AuthnService = request.app.state.authn
    checks += [ReadinessCheck(name=n, ok=ok, detail=d) for n, ok, d in await authn.readiness()]
    # A service left out is a deployment's choice (an authorizer calls none), not a state
    # that passes: shown, never unready. Start-up logs the same (services_not_configured).
    for name, routes in ROUTE_SERVICES.items():
        configured = name in services.names
        detail = "configured" if configured else f"not configured: {', '.join(routes)} answer 503"
        checks.append(ReadinessCheck(name=f"service:{name}", ok=True, detail=detail))
    redis = getattr(request.app.state, "redis", None)
    if redis is not None:
        ok, detail = await redis_health(redis)
        checks.append(ReadinessCheck(name="redis", ok=ok, detail=detail))
    # A downstream breaker never makes the gateway unready (that would cascade); it is shown.
    for breaker in services.breakers():
        checks.append(
            ReadinessCheck(name=f"breaker:{breaker.service}", ok=True, detail=breaker.state)
        )
    ready = all(c.ok for c in checks)
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


# HEAD too (RFC 9110 section 9.3.2): a load balancer or probe that checks with HEAD must
# not get a 405. Kept out of the schema, where it would repeat the GET operation.
router.add_api_route("/healthz", healthz, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/readyz", readyz, methods=["HEAD"], include_in_schema=False)
