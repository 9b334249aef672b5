"""Models of the API's own answers (probes, problem details), and relayed validated JSON."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel, ConfigDict

from app.domain.validated import ValidatedJson


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


def relay(checked: ValidatedJson[Any], status_code: int = 200) -> Response:
    """A service's answer already validated against the route's response model, as it came."""
    return Response(checked.body, status_code=status_code, media_type="application/json")
