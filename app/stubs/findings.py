"""The findings stub: seeded findings, freeze for closing, streamed evidence uploads."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from starlette.requests import ClientDisconnect

from app.stubs.bodies import json_object
from app.stubs.data import seed_findings
from app.stubs.recording import record, record_gone, remember, replay

UPLOAD_MEMORY = 1000  # the evidence uploads ``app.state.uploads`` lists


class RecentUploads(list[dict[str, Any]]):
    """The last ``capacity`` uploads' progress, the oldest forgotten first: a list, as
    the tests that watch an upload read it, that a long run no longer grows without end."""

    def __init__(self, capacity: int = UPLOAD_MEMORY) -> None:
        super().__init__()
        self.capacity = capacity

    def append(self, progress: dict[str, Any]) -> None:
        super().append(progress)
        if len(self) > self.capacity:
            del self[0]


def add_findings_routes(app: FastAPI, seed: int) -> Callable[[], None]:
    """The findings routes; returns what puts their data back as seeded (``POST /_reset``)."""
    store = seed_findings(seed)
    frozen: set[str] = set()
    app.state.uploads = RecentUploads()

    def reseed() -> None:
        store.clear()
        store.update(seed_findings(seed))
        frozen.clear()
        app.state.uploads.clear()  # in place: tests hold the list

    @app.get("/engagements/{engagement_id}/findings")
    async def list_findings(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        items = store.get(engagement_id, [])
        return {"engagement_id": engagement_id, "items": items, "count": len(items)}

    @app.get("/engagements/{engagement_id}/findings/{finding_id}")
    async def get_finding(engagement_id: str, finding_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        for item in store.get(engagement_id, []):
            if item["id"] == finding_id:
                return item
        raise HTTPException(404, "no such finding")

    @app.post("/engagements/{engagement_id}/findings", status_code=201)
    async def create_finding(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        if (earlier := replay(request)) is not None:  # a keyed create sent again
            return dict(earlier)
        if engagement_id in frozen:
            raise HTTPException(409, "findings are frozen")
        payload = await json_object(request, "title", "severity", "created_by")
        items = store.setdefault(engagement_id, [])
        item = {
            "id": f"F-{len(items) + 1:04d}",
            "engagement_id": engagement_id,
            "title": payload["title"],
            "severity": payload["severity"],
            "status": "open",
            "description": payload.get("description", ""),
            "created_by": payload["created_by"],
            "created_at": datetime.now(UTC).isoformat(),
        }
        items.append(item)
        return dict(remember(request, item))

    @app.post("/engagements/{engagement_id}/findings/freeze")
    async def freeze(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        if (earlier := replay(request)) is not None:
            return dict(earlier)
        frozen.add(engagement_id)
        count = len(store.get(engagement_id, []))
        return dict(
            remember(request, {"engagement_id": engagement_id, "frozen": True, "count": count})
        )

    @app.post("/engagements/{engagement_id}/findings/unfreeze")
    async def unfreeze(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        frozen.discard(engagement_id)
        return {"engagement_id": engagement_id, "frozen": False}

    @app.get("/_frozen")
    async def frozen_engagements() -> list[str]:
        return sorted(frozen)

    @app.post("/engagements/{engagement_id}/evidence", status_code=201)
    async def upload_evidence(engagement_id: str, request: Request) -> dict[str, Any]:
        """Counts bytes as they arrive (tests watch ``uploads``), then verifies the whole."""
        progress: dict[str, Any] = {"engagement_id": engagement_id, "received": 0, "done": False}
        app.state.uploads.append(progress)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                progress["received"] = len(body)
        except ClientDisconnect:
            record_gone(request)  # cut short: listed at /_seen, never stored
            raise
        progress["done"] = True
        entry = await record(request, bytes(body))
        return {
            "engagement_id": engagement_id,
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "signature": entry["signature"],
        }

    return reseed
