"""``GET /v1/engagements/{id}/overview``: one concurrent fan-out with a total deadline.

The engagement, its findings and its reports are fetched at once. Whatever has
not answered when the deadline passes is cancelled; a part that failed, timed
out or met an open breaker is reported in ``degraded`` and its section is
``null``, so the caller still gets what is known. An engagement the service
does not know is a 404; if no part answered at all, the first failure is raised.
Traced as one ``fanout overview`` span with a ``branch <service>`` span per part.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from pydantic import BaseModel

from app.core.errors import DownstreamTimeout, GatewayError, NotFound
from app.core.tracing import SERVICE, current_span, span
from app.domain.engagements import (
    DegradedPart,
    Engagement,
    EngagementOverview,
    FindingsSummary,
    Report,
)
from app.domain.findings import FindingList
from app.downstream.client import ServiceRegistry, parse_answer, raise_for_client_error
from app.downstream.deadline import within

log = structlog.get_logger("gateway.composite")


class _ReportList(BaseModel):
    items: list[Report]


def summarize(findings: FindingList) -> FindingsSummary:
    severities = Counter(item.severity for item in findings.items)
    open_count = sum(1 for item in findings.items if item.status == "open")
    return FindingsSummary(count=findings.count, open=open_count, by_severity=dict(severities))


class OverviewService:
    """Fans out to the engagements, findings and reports services."""

    def __init__(
        self,
        services: ServiceRegistry,
        deadline_seconds: float,
        downstream_deadline_seconds: float | None = None,
    ) -> None:
        self._services = services
        self._deadline = deadline_seconds
        # The request's (app.downstream.deadline): parts still degrade at the fan-out's own.
        self._downstream_deadline = downstream_deadline_seconds

    async def _get(self, service: str, path: str, model: type[BaseModel]) -> Any:
        response = await self._services.get(service).call("GET", path)
        raise_for_client_error(service, response)
        return parse_answer(service, response.content, model)

    def _parts(self, engagement_id: str) -> dict[str, Callable[[], Coroutine[Any, Any, Any]]]:
        base = f"/engagements/{engagement_id}"
        return {
            "engagements": lambda: self._get("engagements", base, Engagement),
            "findings": lambda: self._get("findings", f"{base}/findings", FindingList),
            "reports": lambda: self._get("reports", f"{base}/reports", _ReportList),
        }

    @staticmethod
    async def _branch(name: str, fetch: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
        """One part in its own span; a part cut by the deadline says so."""
        with span(f"branch {name}", {"gateway.fanout.branch": name, SERVICE: name}) as branch:
            try:
                return await fetch()
            except asyncio.CancelledError:
                if branch.is_recording():
                    branch.set_attribute("gateway.fanout.outcome", "deadline_exceeded")
                raise

    async def overview(self, engagement_id: str) -> EngagementOverview:
        """The engagement's overview, partial if some service failed or was too slow."""
        with (
            within(self._downstream_deadline),
            span("fanout overview", {"gateway.fanout": "overview"}),
        ):
            return await self._overview(engagement_id)

    async def _overview(self, engagement_id: str) -> EngagementOverview:
        tasks: dict[str, asyncio.Task[Any]] = {
            name: asyncio.create_task(self._branch(name, fetch))
            for name, fetch in self._parts(engagement_id).items()
        }
        done, pending = await asyncio.wait(tasks.values(), timeout=self._deadline)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        results: dict[str, Any] = {}
        degraded: list[DegradedPart] = []
        errors: list[GatewayError] = []
        for name, task in tasks.items():
            outcome = self._outcome(name, task, done)
            if isinstance(outcome, GatewayError):
                reason = "deadline_exceeded" if task not in done else outcome.code
                log.warning("overview_part", service=name, outcome=reason)
                errors.append(outcome)
                degraded.append(DegradedPart(service=name, reason=reason))
            else:
                log.info("overview_part", service=name, outcome="ok")
                results[name] = outcome
        if degraded and current_span().is_recording():
            current_span().set_attribute("gateway.degraded", [d.service for d in degraded])
        return self._assemble(engagement_id, results, degraded, errors)

    @staticmethod
    def _outcome(name: str, task: asyncio.Task[Any], done: set[asyncio.Task[Any]]) -> Any:
        """The part's result, or the ``GatewayError`` that degrades it."""
        if task not in done:
            return DownstreamTimeout(name, f"The {name} service missed the overview deadline.")
        error = task.exception()
        if isinstance(error, NotFound) and name == "engagements":
            raise error
        if error is not None and not isinstance(error, GatewayError):
            raise error
        return error or task.result()

    @staticmethod
    def _assemble(
        engagement_id: str,
        results: dict[str, Any],
        degraded: list[DegradedPart],
        errors: list[GatewayError],
    ) -> EngagementOverview:
        if not results and errors:
            raise errors[0]
        findings = results.get("findings")
        reports = results.get("reports")
        return EngagementOverview(
            engagement_id=engagement_id,
            engagement=results.get("engagements"),
            findings=summarize(findings) if findings is not None else None,
            reports=reports.items if reports is not None else None,
            degraded=degraded,
        )
