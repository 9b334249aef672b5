"""``GET /docs/signing.md``: the signing profile the schema links to, served by the gateway.

Public like ``/docs`` and ``/openapi.json``: a proxy implementer reads it before
holding a key. It is the page in the source tree (``app/api/docs/signing.md``),
read once, so it cannot drift from what the repository documents.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from app.api.openapi import SIGNING_PAGE

router = APIRouter(tags=["documentation"])
_SIGNING = (Path(__file__).resolve().parents[1] / "docs" / "signing.md").read_bytes()


@router.get(SIGNING_PAGE, include_in_schema=False)
async def signing_profile() -> Response:
    """The RFC 9421 signing profile, as Markdown."""
    return Response(_SIGNING, media_type="text/markdown; charset=utf-8")
