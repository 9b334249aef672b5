"""``GET /metrics``: Prometheus exposition, outside the signature check like health.

Scrapers do not sign requests, and the page carries counts and route templates,
never subjects, keys or bodies. Restrict who reaches it at the network edge (see
app/api/docs/metrics.md) or turn it off with ``ops.metrics_enabled: false``.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.routing import GuardedRoute
from app.ops.metrics import CONTENT_TYPE, render

router = APIRouter(route_class=GuardedRoute, tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
)
async def metrics() -> Response:
    """Every metric family of this gateway (all workers merged)."""
    return Response(render(), media_type=CONTENT_TYPE)


# HEAD too, as for the probes (RFC 9110 section 9.3.2); kept out of the schema.
router.add_api_route("/metrics", metrics, methods=["HEAD"], include_in_schema=False)
