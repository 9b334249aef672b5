"""The reports stub: seeded reports, final reports rendered by the close saga, streamed content."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import StreamingResponse

from app.stubs.bodies import json_object
from app.stubs.data import report_chunks, seed_reports
from app.stubs.recording import record, remember, replay


def add_report_routes(app: FastAPI, seed: int) -> Callable[[], None]:
    """The reports routes; returns what puts their data back as seeded (``POST /_reset``)."""
    store = seed_reports(seed)

    def reseed() -> None:
        store.clear()
        store.update(seed_reports(seed))

    def _find(engagement_id: str, report_id: str) -> dict[str, Any]:
        for report in store.get(engagement_id, []):
            if report["id"] == report_id:
                return report
        raise HTTPException(404, "no such report")

    @app.get("/engagements/{engagement_id}/reports")
    async def list_reports(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        items = [r for r in store.get(engagement_id, []) if r["status"] != "withdrawn"]
        return {"engagement_id": engagement_id, "items": items}

    @app.post("/engagements/{engagement_id}/reports", status_code=201)
    async def render_report(engagement_id: str, request: Request) -> dict[str, Any]:
        await record(request)
        if (earlier := replay(request)) is not None:
            return dict(earlier)
        payload = await json_object(request)
        items = store.setdefault(engagement_id, [])
        report = {
            "id": f"R-{len(items) + 1:04d}",
            "engagement_id": engagement_id,
            "kind": str(payload.get("kind", "final")),
            "status": "final",
            "size_bytes": 256 * 1024,
            "created_at": datetime.now(UTC).isoformat(),
        }
        items.append(report)
        return dict(remember(request, report))

    @app.delete("/engagements/{engagement_id}/reports/{report_id}", status_code=204)
    async def withdraw_report(engagement_id: str, report_id: str, request: Request) -> Response:
        await record(request)
        _find(engagement_id, report_id)["status"] = "withdrawn"
        return Response(status_code=204)

    @app.get("/engagements/{engagement_id}/reports/{report_id}/content")
    async def report_content(
        engagement_id: str, report_id: str, request: Request, size: int | None = None
    ) -> StreamingResponse:
        await record(request)
        report = _find(engagement_id, report_id)
        length = size if size is not None and 0 <= size <= 64 << 20 else report["size_bytes"]
        chunks = report_chunks(report_id, length)

        async def body() -> AsyncIterator[bytes]:
            for chunk in chunks:
                yield chunk

        headers = {"content-length": str(length), "etag": f'"{report_id}-{length}"'}
        return StreamingResponse(body(), media_type="application/pdf", headers=headers)

    return reseed
