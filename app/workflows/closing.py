"""``POST /v1/engagements/{id}/close``: a saga over three services, applied once per key.

Steps, each a keyed (so retryable) POST, undone in reverse if a later one fails (a
step whose answer was lost is undone too: freeze and close need nothing from the
answer; the render is sent again with its key, which answers the report it made):

    1. freeze_findings  findings     POST .../findings/freeze     undo: POST .../findings/unfreeze
    2. render_report    reports      POST .../reports (final)     undo: DELETE .../reports/{id}
    3. close            engagements  POST .../close               undo: POST .../reopen
    4. publish_closed   gateway      the engagement state         undo: withdraw the fact

Step 4 makes every gateway decide the engagement as closed (read-only) within a
second (``app/authz/closed.py``); if it cannot (Redis down), the close is undone
rather than left closed for the services but open for some gateways. A close
of an engagement the service already reports closed records that fact too,
then answers 409.

The saga holds the engagement's lock (``app.workflows.engagement_lock``): a
reopen or another close of the same engagement meanwhile is a 409. Steps 3 and 4
first confirm the lock is still the saga's (a Redis that lost it let a reopen
in): if not, they fail and the saga undoes the others (``503 engagement_lock_lost``).

The whole operation runs under the caller's ``Idempotency-Key`` (required): a
retry with the same key and body returns the first result without calling any
service again. Each step sends ``<key>:<run>:<step>`` downstream (``<run>`` fresh
per run of the saga), so a step retried after a lost answer is not applied twice
by the service either, and a run after a failed, compensated one applies its
steps again instead of getting the undone steps' answers replayed. The cost: a
run cut short without compensation (its gateway died) is not replayed either;
its rerun renders another final report.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Any

import httpx
import structlog
from pydantic import BaseModel

from app.authz.closed import ClosedFact, EngagementState
from app.core import logcontext
from app.core.errors import Conflict, GatewayError
from app.domain.engagements import CloseRequest, CloseResult, CloseStep, Engagement, Report
from app.downstream.client import ServiceRegistry, parse_answer, raise_for_client_error
from app.downstream.deadline import within
from app.workflows.engagement_lock import EngagementLocks, Held
from app.workflows.idempotency import Codec, IdempotencyStore
from app.workflows.saga import Saga, Step


class _Frozen(BaseModel):
    count: int


log = structlog.get_logger("gateway.saga")
RESULT_CODEC = Codec(lambda r: r.model_dump_json().encode(), CloseResult.model_validate_json)


def fingerprint(body: CloseRequest) -> str:
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


class CloseService:
    """Closes an engagement on behalf of an authorized caller."""

    def __init__(
        self,
        services: ServiceRegistry,
        store: IdempotencyStore,
        state: EngagementState,
        locks: EngagementLocks,
        deadline_seconds: float | None = None,
    ) -> None:
        self._services = services
        self._store = store
        self._state = state
        self._locks = locks
        self._deadline = deadline_seconds  # the saga's calls; never its undo (saga.py)

    async def close(
        self, engagement_id: str, body: CloseRequest, key: str, subject: str
    ) -> tuple[CloseResult, bool]:
        """``(result, replayed)`` for this key; the saga runs at most once per key."""
        scope = ("close", subject, engagement_id, key)
        with within(self._deadline):
            result, replayed = await self._store.run(
                scope,
                fingerprint(body),
                lambda: self._locked_close(engagement_id, body, key, subject),
                RESULT_CODEC,
            )
        if replayed and await self._state.confirmed(engagement_id) is None:
            # While the engagement is closed, the policy refuses a close (a write) before
            # it gets here; so it was reopened since: the stored "closed" is stale. Read
            # from the shared state, not this gateway's snapshot: a retry that reached it
            # before it heard of the close found no fact and was told "reopened" wrongly.
            raise Conflict(
                "The engagement was reopened after this close; "
                "send a new Idempotency-Key to close it again."
            )
        return result, replayed

    async def _post(self, service: str, path: str, key: str | None, json: Any = None) -> bytes:
        response = await self._services.get(service).call(
            "POST", path, json=json if json is not None else {}, idempotency_key=key
        )
        raise_for_client_error(service, response)
        return response.content

    async def _delete(self, service: str, path: str) -> None:
        response = await self._services.get(service).call("DELETE", path)
        raise_for_client_error(service, response)

    async def _engagement(self, engagement_id: str) -> Engagement:
        response = await self._services.get("engagements").call(
            "GET", f"/engagements/{engagement_id}"
        )
        raise_for_client_error("engagements", response)
        engagement: Engagement = parse_answer("engagements", response.content, Engagement)
        return engagement

    async def _locked_close(
        self, engagement_id: str, body: CloseRequest, key: str, subject: str
    ) -> CloseResult:
        """The saga under the engagement's lock: no reopen or other close runs meanwhile."""
        async with self._locks.hold(engagement_id, "close") as held:
            return await self._close(engagement_id, body, key, subject, held)

    async def _close(
        self, engagement_id: str, body: CloseRequest, key: str, subject: str, held: Held
    ) -> CloseResult:
        if (await self._engagement(engagement_id)).status == "closed":
            await self._record_known_close(engagement_id)
            raise Conflict("The engagement is already closed.")
        base = f"/engagements/{engagement_id}"
        key = f"{key}:{secrets.token_hex(8)}"  # this run's: a compensated run's steps stay undone
        report_request = {"kind": "final", "requested_by": subject, "reason": body.reason}
        published: list[ClosedFact] = []  # the fact step 4 writes, for its undo
        # Each step parses its own answer, so a bad answer fails that step (and undoes the
        # others) rather than after everything committed. Freeze and close are also undone
        # when their answer is lost (timed out, cut, 5xx): they may have been applied.
        saga = Saga(
            "close_engagement",
            [
                Step(
                    "freeze_findings",
                    "findings",
                    lambda: self._freeze(base, key),
                    lambda _: self._unfreeze(engagement_id, base, key),
                    undo_when_unanswered=True,
                ),
                Step(
                    "render_report",
                    "reports",
                    lambda: self._render(base, key, report_request),
                    lambda report: self._withdraw_render(base, key, report_request, report),
                    undo_when_unanswered=True,
                ),
                Step(
                    "close",
                    "engagements",
                    lambda: self._close_step(engagement_id, base, key, held),
                    lambda _: self._reopen(base, key),
                    undo_when_unanswered=True,
                ),
                # Undone only when cancelled mid-publish (shutdown's drain ran out): the
                # fact may be written while the services' steps are undone. A failed
                # publish is taken back by the state itself (undone_if_unconfirmed).
                Step(
                    "publish_closed",
                    "gateway",
                    lambda: self._publish(engagement_id, subject, held, published),
                    lambda _: self._withdraw(published),
                    undo_when_unanswered=True,
                ),
            ],
        )
        results = await saga.run()
        return self._result(engagement_id, results, saga)

    async def _freeze(self, base: str, key: str) -> _Frozen:
        raw = await self._post("findings", f"{base}/findings/freeze", f"{key}:freeze")
        frozen: _Frozen = parse_answer("findings", raw, _Frozen)
        return frozen

    async def _render(self, base: str, key: str, request: dict[str, str]) -> Report:
        response = await self._send_render(base, key, request)
        raise_for_client_error("reports", response)
        report: Report = parse_answer("reports", response.content, Report)
        return report

    async def _send_render(self, base: str, key: str, request: dict[str, str]) -> httpx.Response:
        """The render, keyed: sent again, it answers the report it made."""
        return await self._services.get("reports").call(
            "POST", f"{base}/reports", json=request, idempotency_key=f"{key}:render"
        )

    async def _close_step(self, engagement_id: str, base: str, key: str, held: Held) -> Engagement:
        await held.confirm()  # not sent if a reopen may be running (nothing to undo)
        try:
            raw = await self._post("engagements", f"{base}/close", f"{key}:close")
        except Conflict:
            # Closed meanwhile (another close ran beside this one): recorded like any close
            # the service reports; the undo then leaves the findings frozen (_unfreeze).
            await self._record_known_close(engagement_id)
            raise
        closed: Engagement = parse_answer("engagements", raw, Engagement)
        return closed

    async def _publish(
        self, engagement_id: str, subject: str, held: Held, published: list[ClosedFact]
    ) -> None:
        """Every gateway decides the engagement as closed from now on (503 if it cannot)."""
        await held.confirm()
        corr_id = logcontext.current().get("corr_id") or ""
        fact = ClosedFact(engagement_id, "close_saga", str(corr_id), time.time(), subject)
        published.append(fact)
        # Undone by the saga if this fails: a write Redis may still apply is taken back.
        await self._state.close(fact, undone_if_unconfirmed=True)

    async def _withdraw(self, published: list[ClosedFact]) -> None:
        """The publish was cut short (cancelled): its fact, if written, goes with the undo."""
        for fact in published:
            await self._state.withdraw(fact)

    async def _record_known_close(self, engagement_id: str) -> None:
        """The service says closed but this gateway did not know: record it (best effort)."""
        if self._state.get(engagement_id) is not None:
            return
        fact = ClosedFact(engagement_id, "engagements_service", "close request", time.time())
        try:
            await self._state.close(fact)
        except GatewayError:  # reconciliation records it later; the caller still gets 409
            log.warning("engagement_state_not_recorded", engagement=engagement_id)

    # The undo calls carry keys of their own, so they are retried like any keyed POST,
    # and may be sent for a step whose answer never came: services take them idempotently.
    async def _reopen(self, base: str, key: str) -> None:
        await self._post("engagements", f"{base}/reopen", f"{key}:undo-close")

    async def _unfreeze(self, engagement_id: str, base: str, key: str) -> None:
        if (await self._engagement(engagement_id)).status == "closed":
            # Closed by another close meanwhile: its findings stay frozen, whatever ours did.
            log.warning("saga_unfreeze_skipped", engagement=engagement_id, reason="closed")
            return
        await self._post("findings", f"{base}/findings/unfreeze", f"{key}:undo-freeze")

    async def _withdraw_render(
        self, base: str, key: str, request: dict[str, str], report: Report | None
    ) -> None:
        if report is None:
            # Its answer was lost (it may have been rendered: an orphan final report, and
            # one more each time the close is sent again). The keyed render sent again
            # answers the report it made (or makes it now), which is then withdrawn.
            response = await self._send_render(base, key, request)
            if 400 <= response.status_code < 500:
                # Refused (the first answer was a refusal the typed route could not
                # map): the same keyed request rendered nothing to withdraw.
                log.info("saga_render_undo_refused", status=response.status_code)
                return
            report = parse_answer("reports", response.content, Report)
        await self._delete("reports", f"{base}/reports/{report.id}")

    @staticmethod
    def _result(engagement_id: str, results: dict[str, Any], saga: Saga) -> CloseResult:
        frozen: _Frozen = results["freeze_findings"]
        report: Report = results["render_report"]
        closed: Engagement = results["close"]
        return CloseResult(
            engagement_id=engagement_id,
            status="closed",
            closed_at=closed.closed_at,
            final_report_id=report.id,
            frozen_findings=frozen.count,
            steps=[CloseStep(name=s.name, service=s.service, status="done") for s in saga.steps],
        )
