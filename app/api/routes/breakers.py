"""``GET /admin/breakers``: every downstream service's circuit breaker, for operators."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from app.api.deps import Authorized, Services
from app.api.routing import GuardedRoute
from app.api.schemas import Problem
from app.domain.engagements import BreakerList, BreakerState

router = APIRouter(route_class=GuardedRoute, prefix="/admin", tags=["admin"])

ERRORS: dict[int | str, dict[str, object]] = {
    status: {"model": Problem, "content": {"application/problem+json": {}}} for status in (401, 403)
}


@router.get("/breakers", response_model=BreakerList, responses=ERRORS, summary="Circuit breakers")
async def list_breakers(_grant: Authorized, services: Services) -> BreakerList:
    """State, failure count and time to the next trial call of each service's breaker."""
    return BreakerList(
        breakers=[BreakerState.model_validate(asdict(s)) for s in services.breakers()]
    )
