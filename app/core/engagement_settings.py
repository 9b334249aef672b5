"""The ``policy.engagement_state`` settings: closed engagements shared by every gateway.

Mounted on ``PolicySettings`` (environment: ``GATEWAY_POLICY__ENGAGEMENT_STATE__...``);
see ``app/authz/closed.py`` and decision 0009.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class EngagementStateSettings(BaseModel):
    """Where closed engagements are shared and how often they are checked."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9:._-]{1,48}$")] = Field(
        default="gw:engagements",
        description="Redis hash tag of the closed-engagement keys; also names the change channel",
    )
    check_interval_seconds: Annotated[float, Field(ge=0.05, le=60)] = Field(
        default=0.5,
        description="with Redis: how often each gateway checks for changes it was not told of",
    )
    reconcile_interval_seconds: Annotated[float, Field(ge=0, le=86_400)] = Field(
        default=30.0,
        description="how often closed engagements are read from the engagements service "
        "(0: only at start-up)",
    )
    startup_timeout_seconds: Annotated[float, Field(gt=0, le=60)] = Field(
        default=3.0,
        description="how long start-up waits for the first load before serving (not ready, "
        "and every engagement decided closed: writes denied, until it succeeds)",
    )
