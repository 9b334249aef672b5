"""Stub downstream services: real HTTP servers with seeded, in-memory data.

``create_stub_app(name)`` builds the ``engagements``, ``findings`` or ``reports``
service. Each records the headers it received (``GET /_seen``) so integration
tests can assert what the gateway propagated.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from app.stubs.data import ENGAGEMENTS, seed_findings

STUB_NAMES = ("engagements", "findings", "reports")


def _record(app: FastAPI, request: Request) -> None:
    app.state.seen.append(
        {"method": request.method, "path": request.url.path, "headers": dict(request.headers)}
    )


def _findings_routes(app: FastAPI, seed: int) -> None:
    store = seed_findings(seed)

    @app.get("/engagements/{engagement_id}/findings")
    async def list_findings(engagement_id: str, request: Request) -> dict[str, Any]:
        _record(app, request)
        items = store.get(engagement_id, [])
        return {"engagement_id": engagement_id, "items": items, "count": len(items)}

    @app.get("/engagements/{engagement_id}/findings/{finding_id}")
    async def get_finding(engagement_id: str, finding_id: str, request: Request) -> dict[str, Any]:
        _record(app, request)
        for item in store.get(engagement_id, []):
            if item["id"] == finding_id:
                return item
        raise HTTPException(404, "no such finding")

    @app.post("/engagements/{engagement_id}/findings", status_code=201)
    async def create_finding(engagement_id: str, request: Request) -> dict[str, Any]:
        _record(app, request)
        payload = await request.json()
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
        return item


def _engagement_routes(app: FastAPI) -> None:
    by_id = {e["id"]: e for e in ENGAGEMENTS}

    @app.get("/engagements/{engagement_id}")
    async def get_engagement(engagement_id: str, request: Request) -> dict[str, Any]:
        _record(app, request)
        if engagement_id not in by_id:
            raise HTTPException(404, "no such engagement")
        return by_id[engagement_id]


def _report_routes(app: FastAPI) -> None:
    @app.get("/engagements/{engagement_id}/reports")
    async def list_reports(engagement_id: str, request: Request) -> dict[str, Any]:
        _record(app, request)
        return {
            "engagement_id": engagement_id,
            "items": [
                {
                    "id": "R-0001",
                    "engagement_id": engagement_id,
                    "kind": "interim",
                    "status": "final",
                }
            ],
        }


def create_stub_app(name: str, seed: int = 7) -> FastAPI:
    """A stub service by name; unknown names are a ``ValueError``."""
    if name not in STUB_NAMES:
        raise ValueError(f"unknown stub {name!r}; choose one of {', '.join(STUB_NAMES)}")
    app = FastAPI(title=f"stub-{name}", docs_url=None, redoc_url=None)
    app.state.seen = deque(maxlen=1000)

    @app.get("/_health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/_seen")
    async def seen() -> list[dict[str, Any]]:
        return list(app.state.seen)

    if name == "findings":
        _findings_routes(app, seed)
    elif name == "engagements":
        _engagement_routes(app)
    else:
        _report_routes(app)
    return app
