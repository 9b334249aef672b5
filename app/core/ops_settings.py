"""The ``ops`` settings section: rate limits, reload notices, metrics, shutdown.

It lives beside the code it configures and is mounted on ``Settings`` as ``ops``
(environment: ``GATEWAY_OPS__...``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RateLimitRule(_Section):
    """`limit` requests per `window_seconds`, refilled evenly (GCRA)."""

    limit: Annotated[int, Field(ge=1, le=1_000_000, description="requests allowed per window")]
    window_seconds: Annotated[
        float, Field(gt=0, le=86_400, description="window length; the quota refills evenly")
    ] = 1.0

    @property
    def emission_interval(self) -> float:
        """Seconds of quota one request uses."""
        return self.window_seconds / self.limit


class RateLimitSettings(_Section):
    """Per-subject and per-engagement limits; a rule left unset is not enforced."""

    subject: RateLimitRule | None = Field(
        default=None, description="limit per signed subject, across all engagements"
    )
    engagement: RateLimitRule | None = Field(
        default=None, description="limit per engagement, across all subjects"
    )
    on_redis_error: Literal["open", "closed"] = Field(
        default="closed",
        description="when Redis is unreachable: closed answers 503, open lets requests through",
    )
    key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9:_-]{1,32}$")] = Field(
        default="gw:rl:", description="prefix of the Redis keys that hold rate-limit state"
    )
    max_buckets: Annotated[int, Field(ge=1, le=10_000_000)] = Field(
        default=100_000,
        description="without Redis: the most buckets (subjects and engagements) a process "
        "keeps; beyond it the least recently spent is forgotten (it starts full again)",
    )


class ReloadNoticeSettings(_Section):
    """How policy revisions travel between gateway processes (Redis only)."""

    channel: Annotated[str, Field(pattern=r"^[A-Za-z0-9:._-]{1,64}$")] = Field(
        default="gw:policy:revision",
        description="pub/sub channel, also the key holding the latest announced revision",
    )
    check_interval_seconds: Annotated[float, Field(ge=0.05, le=3600)] = Field(
        default=5.0,
        description="periodic revision check, catching notices lost while disconnected",
    )


class OpsSettings(_Section):
    """Operations: rate limits, reload notices, metrics and shutdown."""

    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    reload_notices: ReloadNoticeSettings = Field(default_factory=ReloadNoticeSettings)
    metrics_enabled: bool = Field(default=True, description="serve GET /metrics")
    graceful_shutdown_seconds: Annotated[int, Field(ge=1, le=3600)] = Field(
        default=20, description="after SIGTERM, how long in-flight requests may take to finish"
    )
