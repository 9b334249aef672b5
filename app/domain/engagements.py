"""Request and response models of the engagement composites and the breaker admin API."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.domain.findings import EngagementId, Severity
from app.domain.text import TEXT_PATTERN


class _Downstream(BaseModel):
    """A model parsed from a service's answer: unknown fields are ignored, not fatal."""

    model_config = ConfigDict(extra="ignore")


class Engagement(_Downstream):
    id: EngagementId
    client: str
    kind: str
    status: Literal["active", "closed"]
    closed_at: datetime | None = None


class Report(_Downstream):
    id: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")]
    engagement_id: EngagementId
    kind: str
    status: str
    size_bytes: Annotated[int, Field(ge=0)] | None = None
    created_at: datetime | None = None


class FindingsSummary(BaseModel):
    count: int
    open: int
    by_severity: dict[Severity, int]


class DegradedPart(BaseModel):
    """A dependency that did not answer in time or failed; its section is ``null``."""

    service: str
    reason: str


class EngagementOverview(BaseModel):
    engagement_id: EngagementId
    engagement: Engagement | None
    findings: FindingsSummary | None
    reports: list[Report] | None
    degraded: list[DegradedPart]


class CloseRequest(BaseModel):
    """Why the engagement is being closed (recorded with the final report)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "Retest complete; client signed off."}]},
    )

    reason: Annotated[str, Field(min_length=3, max_length=500, pattern=TEXT_PATTERN)]


class CloseStep(BaseModel):
    name: str
    service: str
    status: Literal["done", "compensated"]


class CloseResult(BaseModel):
    engagement_id: EngagementId
    status: Literal["closed"]
    closed_at: datetime | None
    final_report_id: str
    frozen_findings: int
    steps: list[CloseStep]


class BreakerState(BaseModel):
    service: str
    state: Literal["closed", "open", "half-open"]
    failures: int
    fail_max: int
    reset_timeout_seconds: float
    half_open_max_calls: int
    trials_in_flight: int
    opened_at: datetime | None
    retry_after_seconds: int | None


class BreakerList(BaseModel):
    breakers: list[BreakerState]


class ReopenRequest(BaseModel):
    """Why a closed engagement is reopened (logged with the admin's name)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "Client asked for a retest (ticket SEC-88)."}]},
    )

    reason: Annotated[str, Field(min_length=3, max_length=500, pattern=TEXT_PATTERN)]


class ReopenResult(BaseModel):
    """The engagement is active again on the services and, within a second, on every gateway."""

    engagement_id: EngagementId
    status: Literal["active"]
    was_closed_by: str | None
    steps: list[CloseStep]
