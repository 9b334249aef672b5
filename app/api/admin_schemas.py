"""Request and response models of the admin API (``/admin/policy``)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.authz.shadow import ShadowStatus
from app.authz.store import EngagementStateStatus, PolicyStatus, ReloadError, ReloadResult


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
    tests_failed: int
    failures: list[str]

    @classmethod
    def of(cls, result: ReloadResult) -> ReloadResultOut:
        return cls.model_validate(result, from_attributes=True)


class ShadowOut(_Model):
    """The candidate policy decided beside the live one, and the requests it would flip."""

    dir: str
    revision: str | None
    loaded_at: datetime | None
    decisions: int
    flips: dict[str, int]
    tests_run: int
    tests_failed: int
    last_error: str | None

    @classmethod
    def of(cls, status: ShadowStatus | None) -> ShadowOut | None:
        if status is None:
            return None
        loaded_at = _at(status.loaded_at) if status.loaded_at is not None else None
        return cls.model_validate({**asdict(status), "loaded_at": loaded_at})


class EngagementStateOut(_Model):
    """Closed engagements outside the policy file: shared through Redis or in this process."""

    shared: bool
    synced: bool
    closed: int
    version: int
    last_error: str | None

    @classmethod
    def of(cls, status: EngagementStateStatus | None) -> EngagementStateOut | None:
        return None if status is None else cls.model_validate(asdict(status))


class PolicyStatusOut(_Model):
    """The policy in force and, if the last reload failed, why; the shadow and closed state."""

    revision: str
    loaded_at: datetime
    files: list[PolicyFileOut]
    rules: int
    tests: int
    last_error: ReloadErrorOut | None
    last_reload: ReloadResultOut | None
    shadow: ShadowOut | None
    engagement_state: EngagementStateOut | None

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
            shadow=ShadowOut.of(status.shadow),
            engagement_state=EngagementStateOut.of(status.engagement_state),
        )


class ReloadRequest(_Model):
    """Why the admin reloads; recorded in the reload log line and the status."""

    reason: Annotated[
        str, Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$")
    ] = "admin_api"
