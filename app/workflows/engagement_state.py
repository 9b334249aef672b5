"""Closed engagements kept in line with the engagements service, and the reopen workflow.

``Reconciler`` reads the engagements the service reports closed, at start-up
(bounded by ``startup_timeout_seconds``) and every
``reconcile_interval_seconds``, and adds those the engagement state does not
know (source ``engagements_service``): a close that never reached the state (a
gateway that died mid-saga, an engagement closed outside the gateway) is caught
up. It never removes one: reopening is explicit, through ``ReopenService``.

``ReopenService`` (``POST /admin/engagements/{engagement}/reopen``): reopen on
the engagements service, unfreeze the findings, then drop the closed fact, in
that order, so a failure leaves the engagement closed for the gateway (fail
closed) and the admin can send it again. It holds the engagement's lock
(``app.workflows.engagement_lock``), so it never interleaves with a close. An
engagement closed by the policy's own ``g3`` line is refused (409): the policy
file is where it reopens.

Its two service calls are bounded by the request's downstream deadline
(``app.downstream.deadline``), as a close's are, and with no undo: a reopen cut
there (504) has not dropped the closed fact (its last step, a Redis write the
deadline does not touch), so it is a failed step like any other, closed for every
gateway, and sending it again completes it (the module docstring of the deadline
weighs this).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from pydantic import BaseModel

from app.authz.closed import EngagementState
from app.authz.store import PolicyStore
from app.core.engagement_settings import EngagementStateSettings
from app.core.errors import Conflict, GatewayError, ServiceUnavailable
from app.domain.engagements import CloseStep, Engagement, ReopenResult
from app.domain.identity import Identity
from app.downstream.client import ServiceRegistry, parse_answer, raise_for_client_error
from app.downstream.deadline import within
from app.downstream.propagation import CallContext, bind_call_context
from app.workflows.engagement_lock import EngagementLocks

log = structlog.get_logger("gateway.engagement_state")
SERVICE = "engagements"
RETRY_SECONDS = 5.0
GATEWAY_IDENTITY = Identity(subject="authz-gateway", groups=(), key_id="gateway")


class _EngagementList(BaseModel):
    items: list[Engagement]


class Reconciler:
    """Adds the engagements the engagements service reports closed to the engagement state."""

    def __init__(
        self, services: ServiceRegistry, state: EngagementState, settings: EngagementStateSettings
    ) -> None:
        self._services = services
        self._state = state
        self._settings = settings
        self.succeeded = False

    async def reconcile(self) -> list[str]:
        """One round; ``GatewayError`` when the service or the shared state cannot answer."""
        # No caller here: the gateway asks as itself (the service sees this signed subject).
        bind_call_context(CallContext(GATEWAY_IDENTITY, None))
        seen_version = await self._state.current_version()
        response = await self._services.get(SERVICE).call(
            "GET", "/engagements", params={"status": "closed"}
        )
        raise_for_client_error(SERVICE, response)
        listed = parse_answer(SERVICE, response.content, _EngagementList)
        closed = [e.id for e in listed.items if e.status == "closed"]
        added = await self._state.add_reconciled(closed, seen_version)
        if not self._state.shared:
            self._state.mark_synced()  # this process's memory now knows what the service knows
        self.succeeded = True
        log.info("engagement_state_reconciled", closed=len(closed), added=added)
        return added

    async def _attempt(self) -> bool:
        try:
            await self.reconcile()
        except GatewayError as exc:
            self._state.last_error = f"reconcile: {exc.detail}"
            log.warning("engagement_state_reconcile_failed", error=exc.code, detail=exc.detail)
            return False
        return True

    async def _loop(self) -> None:
        interval = self._settings.reconcile_interval_seconds
        while True:
            wait = interval if self.succeeded and interval else RETRY_SECONDS
            if self.succeeded and not interval:
                return  # 0: only at start-up
            await asyncio.sleep(wait)
            await self._attempt()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Reconcile once before serving (bounded), then in the background until shutdown."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._attempt(), self._settings.startup_timeout_seconds)
        task = asyncio.create_task(self._loop(), name="engagement-reconcile")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class ReopenService:
    """Reopens a closed engagement for the services and for every gateway."""

    def __init__(
        self,
        services: ServiceRegistry,
        policy: PolicyStore,
        locks: EngagementLocks,
        deadline_seconds: float | None = None,
    ) -> None:
        self._services = services
        self._policy = policy
        self._locks = locks
        self._deadline = deadline_seconds  # its two service calls (app.downstream.deadline)

    async def reopen(self, engagement_id: str, reason: str, subject: str) -> ReopenResult:
        in_policy = self._policy.current.closed_fact(engagement_id)
        if in_policy is not None:
            raise Conflict(
                f"The policy itself closes {engagement_id} (g3, {engagement_id}, closed at "
                f"{in_policy.ref}): remove that line to reopen it."
            )
        with within(self._deadline):
            return await self._reopen(engagement_id, reason, subject)

    async def _reopen(self, engagement_id: str, reason: str, subject: str) -> ReopenResult:
        """The steps under the engagement's lock; a cut (the deadline) leaves it closed."""
        base = f"/engagements/{engagement_id}"
        async with self._locks.hold(engagement_id, "reopen") as held:  # no close meanwhile
            await self._post(SERVICE, f"{base}/reopen")
            # A lock lost (and a close let in) since: stop; sending it again is safe.
            await held.confirm()
            await self._post("findings", f"{base}/findings/unfreeze")
            await held.confirm()
            try:
                previous = await self._policy.engagements.reopen(engagement_id)
            except ServiceUnavailable as exc:
                # Unconfirmed, not undone: a Redis that stalled past its timeout may still
                # apply it. Who asked and why is logged either way (the audit trail).
                log.warning(
                    "engagement_reopen_unconfirmed",
                    engagement=engagement_id,
                    reopened_by=subject,
                    reason=reason,
                )
                raise ServiceUnavailable(
                    f"The services reopened {engagement_id}, but the shared engagement state "
                    "did not confirm the change, so the gateways may still decide it closed; "
                    "send the reopen again (repeating it is safe).",
                    headers=exc.headers,
                ) from None
        log.info(
            "engagement_reopened",
            engagement=engagement_id,
            reopened_by=subject,
            reason=reason,
            was_closed_by=previous.source if previous else None,
        )
        steps = [("reopen", SERVICE), ("unfreeze_findings", "findings"), ("drop_closed", "gateway")]
        return ReopenResult(
            engagement_id=engagement_id,
            status="active",
            was_closed_by=previous.describe() if previous else None,
            steps=[CloseStep(name=name, service=svc, status="done") for name, svc in steps],
        )

    async def _post(self, service: str, path: str) -> None:
        response = await self._services.get(service).call("POST", path, json={})
        raise_for_client_error(service, response)
