"""Liveness and readiness; outside the signature check by design."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.schemas import Health, Readiness, ReadinessCheck
from app.authz.policy import PolicyEngine
from app.orchestration.client import ServiceRegistry

router = APIRouter(tags=["health"])

REQUIRED_SERVICES = ("findings",)


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
    """Ready when a policy is loaded and the services routes need are configured."""
    policy: PolicyEngine = request.app.state.policy
    services: ServiceRegistry = request.app.state.services
    checks = [
        ReadinessCheck(name="policy", ok=True, detail=f"revision {policy.revision}"),
        ReadinessCheck(
            name="signing_keys",
            ok=len(request.app.state.verifier.keyring) > 0,
            detail=f"{len(request.app.state.verifier.keyring)} key(s) loaded",
        ),
    ]
    for name in REQUIRED_SERVICES:
        ok = name in services.names
        checks.append(
            ReadinessCheck(
                name=f"service:{name}", ok=ok, detail="configured" if ok else "not configured"
            )
        )
    # A downstream breaker never makes the gateway unready (that would cascade); it is shown.
    for breaker in services.breakers():
        checks.append(
            ReadinessCheck(name=f"breaker:{breaker.service}", ok=True, detail=breaker.state)
        )
    ready = all(c.ok for c in checks)
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
