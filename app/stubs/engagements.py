"""The engagements stub: the seeded engagements, closed and reopened by the close saga."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from app.stubs.data import ENGAGEMENTS
from app.stubs.recording import record, remember, replay


def add_engagement_routes(app: FastAPI) -> Callable[[], None]:
    """The engagements routes; returns what puts them back as seeded (``POST /_reset``)."""
    by_id: dict[str, dict[str, Any]] = {}

    def reseed() -> None:
        by_id.clear()
        by_id.update((e["id"], e) for e in copy.deepcopy(ENGAGEMENTS))

    reseed()

    def _get(engagement_id: str) -> dict[str, Any]:
        if engagement_id not in by_id:
            raise HTTPException(404, "no such engagement")
        return by_id[engagement_id]

    @app.get("/engagements")
    async def list_engagements(request: Request, status: str | None = None) -> dict[str, Any]:
        """Every engagement, or those with ``status`` (the gateway reconciles closed ones)."""
        await record(request)
        items = [dict(e) for e in by_id.values() if status is None or e["status"] == status]
        return {"items": items, "count": len(items)}

    @app.get("/engagements/{engagement_id}")
    async def get_engagement(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        return _get(engagement_id)

    @app.post("/engagements/{engagement_id}/close")
    async def close(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        if (earlier := replay(request)) is not None:
            return dict(earlier)
        engagement = _get(engagement_id)
        if engagement["status"] == "closed":
            raise HTTPException(409, "engagement already closed")
        engagement.update(status="closed", closed_at=datetime.now(UTC).isoformat())
        return dict(remember(request, dict(engagement)))

    @app.post("/engagements/{engagement_id}/reopen")
    async def reopen(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        engagement = _get(engagement_id)
        engagement["status"] = "active"
        engagement.pop("closed_at", None)
        return dict(engagement)

    return reseed
