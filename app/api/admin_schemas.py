"""Request and response models of the admin API (``/admin/policy``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.authz.fields import DecisionPath, EngagementOrGlobal
from app.authz.policy import Decision
from app.authz.store import PolicyStatus, ReloadError, ReloadResult
from app.domain.identity import GROUP_PATTERN, SUBJECT_PATTERN


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _at(timestamp: float) -> datetime:
    return datetime.fromtimestamp(timestamp, tz=UTC)


class PolicyFileOut(_Model):
    path: str
    sha256: str


class ReloadErrorOut(_Model):
    at: datetime
    reason: str
    message: str

    @classmethod
    def of(cls, error: ReloadError) -> ReloadErrorOut:
        return cls(at=_at(error.at), reason=error.reason, message=error.message)


class ReloadResultOut(_Model):
    """What one reload did: ``swapped``, ``unchanged`` (same revision) or ``rejected``."""

    outcome: Literal["swapped", "unchanged", "rejected"]
    reason: str
    revision: str
    previous_revision: str
    tests_run: int
    duration_ms: float
    error: str | None

    @classmethod
    def of(cls, result: ReloadResult) -> ReloadResultOut:
        return cls.model_validate(result, from_attributes=True)


class PolicyStatusOut(_Model):
    """The policy in force and, if the last reload failed, why."""

    revision: str
    loaded_at: datetime
    files: list[PolicyFileOut]
    rules: int
    tests: int
    last_error: ReloadErrorOut | None
    last_reload: ReloadResultOut | None

    @classmethod
    def of(cls, status: PolicyStatus) -> PolicyStatusOut:
        return cls(
            revision=status.revision,
            loaded_at=_at(status.loaded_at),
            files=[PolicyFileOut(path=f.path, sha256=f.sha256) for f in status.files],
            rules=status.rules,
            tests=status.tests,
            last_error=ReloadErrorOut.of(status.last_error) if status.last_error else None,
            last_reload=ReloadResultOut.of(status.last_reload) if status.last_reload else None,
        )


class ReloadRequest(_Model):
    """Why the admin reloads; recorded in the reload log line and the status."""

    reason: Annotated[
        str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$")
    ] = "admin_api"


class ExplainRequest(_Model):
    """A hypothetical request to decide against the policy in force."""

    subject: Annotated[str, Field(pattern=SUBJECT_PATTERN.pattern)]
    groups: Annotated[
        list[Annotated[str, Field(pattern=GROUP_PATTERN.pattern)]], Field(max_length=32)
    ] = Field(default_factory=list)
    engagement: EngagementOrGlobal
    method: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z_]{0,31}$")]
    path: Annotated[DecisionPath, Field(min_length=1, max_length=2048)]

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "subject": "alice",
                    "groups": ["red-team"],
                    "engagement": "acme-2026",
                    "method": "POST",
                    "path": "/v1/engagements/acme-2026/findings",
                }
            ]
        },
    )


class ExplainResponse(_Model):
    """The decision, the rule that made it and the roles that reached that rule."""

    decision: Literal["allow", "deny"]
    reason: str
    matched_rule: list[str]
    rule_location: str | None
    role_chain: list[str]
    revision: str
    subject: str
    groups: list[str]
    engagement: str
    method: str
    path: str

    @classmethod
    def of(cls, decision: Decision) -> ExplainResponse:
        return cls(
            decision="allow" if decision.allowed else "deny",
            reason=decision.reason,
            matched_rule=list(decision.matched_rule),
            rule_location=decision.rule_location,
            role_chain=list(decision.role_chain),
            revision=decision.revision,
            subject=decision.subject,
            groups=list(decision.groups),
            engagement=decision.engagement,
            method=decision.action,
            path=decision.obj,
        )
