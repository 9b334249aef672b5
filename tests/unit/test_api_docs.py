"""Swagger UI, ReDoc and the signing profile are served by the gateway itself: no CDN."""

from __future__ import annotations

import re

import httpx
import pytest

from app.main import create_app
from tests.conftest import make_settings

ASSET = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""")


@pytest.fixture
def docs(test_key_env: str) -> httpx.AsyncClient:
    app = create_app(make_settings({"findings": "http://127.0.0.1:9"}))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw")


@pytest.mark.anyio
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_every_asset_from_the_gateway(
    docs: httpx.AsyncClient, page: str
) -> None:
    html = (await docs.get(page)).text
    references = [a or b for a, b in ASSET.findall(html)]
    assert references, f"{page} references no asset"
    assert not re.search(r"https?://", html), f"{page} loads something from elsewhere"
    for reference in references:
        assert reference.startswith("/"), reference
        asset = await docs.get(reference)
        assert asset.status_code == 200, reference
        assert asset.content, reference
    scripts = [r for r in references if r.endswith(".js")]
    assert scripts, f"{page} loads no script"
    for script in scripts:
        response = await docs.get(script)
        assert "javascript" in response.headers["content-type"]
        assert len(response.content) > 100_000, "the whole bundle, not a stub"


@pytest.mark.anyio
async def test_the_signing_profile_the_schema_links_to_is_served(docs: httpx.AsyncClient) -> None:
    schema = (await docs.get("/openapi.json")).json()
    assert "(/docs/signing.md)" in schema["info"]["description"]
    page = await docs.get("/docs/signing.md")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/markdown")
    assert "RFC 9421" in page.text


@pytest.mark.anyio
@pytest.mark.parametrize("path", ["/static-offline-docs", "/static-offline-docs/"])
async def test_a_path_one_slash_short_of_a_route_is_a_404_problem_not_a_redirect(
    docs: httpx.AsyncClient, path: str
) -> None:
    # Starlette offered /static-offline-docs/ (the mount) by a redirect built from the
    # Host field: unsigned, to any host, and a loop (the edge drops the slash again).
    response = await docs.get(path, headers={"Host": "evil.example"})
    assert response.status_code == 404
    assert "location" not in response.headers
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["corr_id"] == response.headers["x-request-id"]


@pytest.mark.anyio
@pytest.mark.parametrize(
    "ranges", ["bytes=abc", "bytes=99999999-99999999", "items=0-1", "bytes=0-1"]
)
async def test_a_docs_asset_is_served_whole_whatever_the_range(
    docs: httpx.AsyncClient, ranges: str
) -> None:
    # Starlette's FileResponse answered a malformed Range in text/plain (400), an
    # unsatisfiable one likewise (416): every refusal of the gateway is a problem.
    whole = await docs.get("/static-offline-docs/swagger-ui.css")
    response = await docs.get("/static-offline-docs/swagger-ui.css", headers={"Range": ranges})
    assert response.status_code == 200
    assert "content-range" not in response.headers
    assert response.content == whole.content
