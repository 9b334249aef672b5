"""Findings as the public API and the workflows both see them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from app.domain.text import TEXT_PATTERN

EngagementId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{1,62}$")]
FindingId = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")]


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    INFO = "info"


class FindingStatus(StrEnum):
    OPEN = "open"
    FIXED = "fixed"
    ACCEPTED = "accepted"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FindingCreate(_Model):
    """A new finding as an analyst records it."""

    title: Annotated[str, Field(min_length=3, max_length=200, pattern=TEXT_PATTERN)]
    severity: Severity
    description: Annotated[str, Field(max_length=10_000, pattern=TEXT_PATTERN)] = ""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "SQL injection in login form",
                    "severity": "high",
                    "description": "The username parameter is concatenated into a query.",
                }
            ]
        },
    )


class Finding(_Model):
    id: FindingId
    engagement_id: EngagementId
    title: str
    severity: Severity
    status: FindingStatus
    description: str
    created_by: str
    created_at: datetime


class FindingList(_Model):
    engagement_id: EngagementId
    items: list[Finding]
    count: int
