"""Request fields as the policy sees them, shared by policy suites and the explain API."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator

from app.authz.source import ENGAGEMENT, GLOBAL_DOMAIN
from app.core.errors import InvalidPath
from app.edge.paths import normalize_path


def _engagement(value: str) -> str:
    if value != GLOBAL_DOMAIN and not ENGAGEMENT.match(value):
        raise ValueError("must be an engagement id or *")
    return value


def _decision_path(value: str) -> str:
    """The path as the gateway would decide it: normalised, without the query."""
    try:
        return normalize_path(value.partition("?")[0])
    except InvalidPath as exc:
        raise ValueError(exc.detail) from None


EngagementOrGlobal = Annotated[str, AfterValidator(_engagement)]
DecisionPath = Annotated[str, AfterValidator(_decision_path)]
