"""Guards and services, declared once as ``Annotated`` dependency aliases.

``Authorized`` is the guard a route declares: ``GuardedRoute``
(``app.api.routing``) finds it and runs authn, the rate limit and the policy
decision *before* FastAPI reads the body, so by the time these dependencies
are solved the caller is authenticated and allowed. ``Authorized`` yields the
``Decision``, ``Authenticated`` the caller's ``Identity``; both only read what
the gate stored, and fail closed where it did not run.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api.pipeline import Guard, admission_of
from app.authz.policy import Decision
from app.authz.store import PolicyStore
from app.domain.identity import Identity
from app.downstream.client import ServiceRegistry
from app.workflows.closing import CloseService
from app.workflows.engagement_state import ReopenService
from app.workflows.findings import FindingsService
from app.workflows.idempotency import HEADER as IDEMPOTENCY_HEADER
from app.workflows.overview import OverviewService

# The engagement/RBAC guard: the normalised path and the method, decided in the
# path's engagement (or in ``*`` for routes without one).
authorize = Guard()
Authorized = Annotated[Decision, Depends(authorize)]
# Routes that act on an Idempotency-Key (close, finding create): when one is sent, the
# signature must cover it (401 component_missing otherwise).
authorize_keyed = Guard(signed_if_present=(IDEMPOTENCY_HEADER,))
KeyedAuthorized = Annotated[Decision, Depends(authorize_keyed)]


async def authenticate(request: Request) -> Identity:
    """The signed caller, as the gate authenticated it (for routes that act on its name)."""
    return admission_of(request).identity


Authenticated = Annotated[Identity, Depends(authenticate)]


async def get_policy_store(request: Request) -> PolicyStore:
    store: PolicyStore = request.app.state.policy
    return store


Policies = Annotated[PolicyStore, Depends(get_policy_store)]


async def get_services(request: Request) -> ServiceRegistry:
    registry: ServiceRegistry = request.app.state.services
    return registry


Services = Annotated[ServiceRegistry, Depends(get_services)]


async def get_findings_service(request: Request) -> FindingsService:
    state = request.app.state
    deadline = state.settings.orchestration.downstream_deadline_seconds
    return FindingsService(state.services, state.idempotency, deadline)


Findings = Annotated[FindingsService, Depends(get_findings_service)]


async def get_overview_service(request: Request) -> OverviewService:
    orchestration = request.app.state.settings.orchestration
    return OverviewService(
        request.app.state.services,
        orchestration.overview_deadline_seconds,
        orchestration.downstream_deadline_seconds,
    )


Overview = Annotated[OverviewService, Depends(get_overview_service)]


async def get_close_service(request: Request) -> CloseService:
    state = request.app.state
    return CloseService(
        state.services,
        state.idempotency,
        state.policy.engagements,
        state.engagement_locks,
        state.settings.orchestration.downstream_deadline_seconds,
    )


Closer = Annotated[CloseService, Depends(get_close_service)]


async def get_reopen_service(request: Request) -> ReopenService:
    state = request.app.state
    return ReopenService(
        state.services,
        state.policy,
        state.engagement_locks,
        state.settings.orchestration.downstream_deadline_seconds,
    )


Reopener = Annotated[ReopenService, Depends(get_reopen_service)]
