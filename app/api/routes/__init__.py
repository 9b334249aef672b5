"""The gateway's routers. ``GUARDED_ROUTERS``: those whose routes the policy decides,
hot routes first (``app.main`` serves them in this order)."""

from __future__ import annotations

from app.api.routes import admin, admin_engagements, breakers, decisions, engagements, findings

GUARDED_ROUTERS = (
    findings.router,
    decisions.router,
    engagements.router,
    admin.router,
    admin_engagements.router,
    breakers.router,
)
