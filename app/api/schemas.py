"""Models of the API's own answers: probes and problem details."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Health(_Model):
    status: str = "ok"


class ReadinessCheck(_Model):
    name: str
    ok: bool
    detail: str


class Readiness(_Model):
    status: str
    checks: list[ReadinessCheck]


class Problem(BaseModel):
    """RFC 9457 problem details, as every error response carries them."""

    type: str
    title: str
    status: int
    detail: str
    corr_id: str | None
