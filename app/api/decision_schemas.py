"""Models of the decision endpoints: the request asked about, and the answer."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.authz.targets import MAX_URI_LENGTH

Mode = Literal["nginx", "traefik", "envoy"]


class OriginalRequest(BaseModel):
    """The request another proxy asks about, as its headers (or its path) carry it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = Field(pattern=r"^[A-Z][A-Z-]{0,19}$", description="e.g. GET")
    uri: str = Field(
        min_length=1,
        max_length=MAX_URI_LENGTH,
        pattern=r"^/[\x21-\x7e]*$",
        description="origin-form request target, path and query, as the client sent it",
    )


class DecisionAnswer(BaseModel):
    """An allowed request: who, where, under which policy revision (body of the 200)."""

    model_config = ConfigDict(extra="forbid")

    allowed: Literal[True] = True
    decision_id: str
    mode: Mode
    subject: str
    groups: list[str]
    engagement: str
    object: str
    action: str
    policy_revision: str
