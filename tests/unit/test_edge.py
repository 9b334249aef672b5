"""The edge middleware: corr_id, body cap, path normalisation and last-resort 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from app.api.problems import install_problem_handlers
from app.edge.correlation import EdgeMiddleware


def _app(max_body: int = 16) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(EdgeMiddleware, max_body_bytes=max_body)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals: db password hunter2")

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"size": len(await request.body()), "path": request.scope["path"]}

    @app.get("/{rest:path}")
    async def where(request: Request) -> dict[str, str]:
        return {"path": request.scope["path"]}

    return app


@pytest.fixture
def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://gw")


@pytest.mark.anyio
async def test_unexpected_exception_is_500_problem_without_internals(
    client: httpx.AsyncClient, captured_logs: list[dict[str, Any]]
) -> None:
    response = await client.get("/boom", headers={"x-request-id": "req-12345678"})
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    assert "hunter2" not in response.text
    assert response.json()["corr_id"] == "req-12345678"
    errors = [line for line in captured_logs if line["event"] == "unhandled_error"]
    assert errors
    assert errors[0]["corr_id"] == "req-12345678"
    assert errors[0]["exc_info"] is True


@pytest.mark.anyio
async def test_declared_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=b"x" * 17)
    assert response.status_code == 413
    assert response.json()["type"].endswith(":payload_too_large")


@pytest.mark.anyio
async def test_streamed_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> Any:
        for _ in range(4):
            yield b"x" * 8

    response = await client.post("/echo", content=chunks())
    assert response.status_code == 413


@pytest.mark.anyio
async def test_body_at_the_limit_passes(client: httpx.AsyncClient) -> None:
    response = await client.post("/echo", content=b"x" * 16)
    assert response.json()["size"] == 16


@pytest.mark.anyio
async def test_routing_sees_the_normalised_path(client: httpx.AsyncClient) -> None:
    response = await client.get("/a//b/./c/../d/")
    assert response.json() == {"path": "/a/b/d"}


@pytest.mark.anyio
async def test_encoded_slash_is_400(client: httpx.AsyncClient) -> None:
    response = await client.get("/a%2Fb")
    assert response.status_code == 400
    assert response.json()["type"].endswith(":invalid_path")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_a_client_gone_mid_body_is_one_log_line_and_no_answer(
    captured_logs: list[dict[str, Any]],
) -> None:
    """Starlette raises ClientDisconnect; the edge logs it once, answers nobody, counts 499."""
    incoming = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "raw_path": b"/echo",
        "query_string": b"",
        "headers": [(b"content-length", b"10")],
    }
    await _app()(scope, receive, send)
    assert sent == []
    events = [line["event"] for line in captured_logs]
    assert events.count("client_disconnected") == 1
    assert "unhandled_error" not in events
    completed = [line for line in captured_logs if line["event"] == "request_completed"]
    assert completed[0]["status"] == 499
