"""The edge middleware: corr_id, body cap and pace, path normalisation and last-resort 500."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app.api.problems import install_problem_handlers
from app.core import tracing
from app.edge.correlation import EdgeMiddleware, body_wait
from app.edge.tracing import ServerSpanMiddleware


def _app(max_body: int = 16, **edge: Any) -> FastAPI:
    app = FastAPI()
    install_problem_handlers(app)
    app.add_middleware(EdgeMiddleware, max_body_bytes=max_body, **edge)

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


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/a%2F" + "%0A%7B%22event%22%3A%22forged%22%7D" * 900, {}),  # invalid: ~30 KB
        ("/" + "b" * 40_000, {"content-length": "17"}),  # 413 before the path is read
    ],
)
async def test_a_refused_path_is_logged_as_sent_and_bounded(
    client: httpx.AsyncClient,
    captured_logs: list[dict[str, Any]],
    target: str,
    headers: dict[str, str],
) -> None:
    """A path the edge refused before normalising it was logged whole (and decoded):
    tens of KB a line from any unsigned client, newlines and quotes included."""
    response = await client.post(target + "?q=1", headers=headers, content=b"x" * 17)
    assert response.status_code in (400, 413)
    [done] = [line for line in captured_logs if line["event"] == "request_completed"]
    assert len(done["path"]) == 256
    assert target.startswith(done["path"])  # as sent: percent-escapes kept, no query


@pytest.mark.anyio
async def test_a_refused_path_is_bounded_on_the_server_span_too() -> None:
    """The server span (outside the edge) read the same unbounded, decoded path."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider.get_tracer("test"))
    try:
        app = ServerSpanMiddleware(_app())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as traced:
            response = await traced.get("/a%2F" + "%0A" * 20_000)
    finally:
        tracing.uninstall()
        provider.shutdown()
    assert response.status_code == 400
    [server] = exporter.get_finished_spans()
    assert server.attributes is not None
    assert server.attributes["url.path"] == ("/a%2F" + "%0A" * 100)[:256]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _post_scope(path: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
    }


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

    await _app()(_post_scope("/echo", [(b"content-length", b"10")]), receive, send)
    assert sent == []
    events = [line["event"] for line in captured_logs]
    assert events.count("client_disconnected") == 1
    assert "unhandled_error" not in events
    completed = [line for line in captured_logs if line["event"] == "request_completed"]
    assert completed[0]["status"] == 499


TIMEOUTS = st.floats(min_value=1e-3, max_value=3600)
RECEIVED = st.integers(min_value=0, max_value=1 << 40)
WAITED = st.floats(min_value=0, max_value=1e9)
RATES = st.integers(min_value=1, max_value=1 << 30)


@given(RECEIVED, WAITED, TIMEOUTS, RATES)
def test_body_wait_bounds_each_pause_and_the_average_rate(
    received: int, waited: float, timeout: float, min_rate: int
) -> None:
    wait = body_wait(received, waited, timeout, min_rate)
    assert math.isfinite(wait)
    assert wait <= timeout  # no single pause longer than the timeout
    allowance = timeout + received / min_rate
    assert (wait > 0) == (waited < allowance)  # all the waits within the allowance
    assert body_wait(received, 0.0, timeout, min_rate) == timeout  # a fresh body: a full wait


@given(RECEIVED, RECEIVED, WAITED, WAITED, TIMEOUTS, RATES)
def test_body_wait_grows_with_bytes_and_shrinks_with_waiting(
    r1: int, r2: int, w1: float, w2: float, timeout: float, min_rate: int
) -> None:
    (r_lo, r_hi), (w_lo, w_hi) = sorted((r1, r2)), sorted((w1, w2))
    assert body_wait(r_lo, w1, timeout, min_rate) <= body_wait(r_hi, w1, timeout, min_rate)
    assert body_wait(r1, w_hi, timeout, min_rate) <= body_wait(r1, w_lo, timeout, min_rate)


@given(RECEIVED, WAITED, TIMEOUTS)
def test_body_wait_without_a_rate_bounds_pauses_only(
    received: int, waited: float, timeout: float
) -> None:
    assert body_wait(received, waited, timeout, 0) == timeout


@pytest.mark.anyio
async def test_a_body_that_stalls_is_408_with_a_close(
    captured_logs: list[dict[str, Any]],
) -> None:
    async def stalls() -> AsyncIterator[bytes]:
        yield b"abc"
        await asyncio.sleep(30)  # never: the edge gives up after 0.05 s
        yield b"def"

    app = _app(1000, body_timeout=0.05)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gw"
    ) as client:
        response = await asyncio.wait_for(client.post("/echo", content=stalls()), timeout=10)
    assert response.status_code == 408
    assert response.headers["connection"] == "close"
    assert response.json()["type"].endswith(":request_timeout")
    assert response.json()["corr_id"] == response.headers["x-request-id"]
    [line] = [line for line in captured_logs if line["event"] == "body_timeout"]
    assert line["received"] == 3
    [done] = [line for line in captured_logs if line["event"] == "request_completed"]
    assert done["status"] == 408


async def _served(app: FastAPI, incoming: list[dict[str, Any]], pause: float) -> list[Any]:
    """Run ``app`` on ``incoming``; each receive after the first takes ``pause`` (the client)."""
    sent: list[dict[str, Any]] = []
    first = True

    async def receive() -> dict[str, Any]:
        nonlocal first
        if not first:
            await asyncio.sleep(pause)
        first = False
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(_post_scope("/slow-reader", []), receive, send)
    return [m["status"] for m in sent if m["type"] == "http.response.start"]


def _slow_reader(**edge: Any) -> FastAPI:
    """Reads the body piece by piece, busy 0.1 s between pieces, then waits for a disconnect."""
    app = _app(1000, **edge)

    @app.post("/slow-reader")
    async def slow_reader(request: Request) -> dict[str, int]:
        size = 0
        async for piece in request.stream():
            size += len(piece)
            await asyncio.sleep(0.1)  # the gateway's own time (a service taking the bytes)
        assert (await request.receive())["type"] == "http.disconnect"
        return {"size": size}

    app.router.routes.insert(0, app.router.routes.pop())  # before the catch-all GET
    return app


@pytest.mark.anyio
async def test_only_time_spent_waiting_for_the_client_counts() -> None:
    """0.3 s of the gateway's own work between pieces, a 0.05 s timeout: served."""
    pieces = [{"type": "http.request", "body": b"ab", "more_body": True}] * 3
    incoming = [*pieces, {"type": "http.request", "body": b"", "more_body": False}]
    app = _slow_reader(body_timeout=0.05, body_min_rate=1 << 30)  # allowance ~ 0.05 s
    assert await _served(app, incoming, pause=0.0) == [200]


@pytest.mark.anyio
async def test_waiting_for_a_disconnect_after_the_body_is_not_bounded() -> None:
    """The whole body in one piece, then a disconnect 0.2 s later: not a body timeout."""
    incoming = [{"type": "http.request", "body": b"abc", "more_body": False}]
    app = _slow_reader(body_timeout=0.05)
    assert await _served(app, incoming, pause=0.2) == [200]


@pytest.mark.anyio
async def test_a_client_pausing_past_the_timeout_between_pieces_is_408() -> None:
    incoming = [
        {"type": "http.request", "body": b"ab", "more_body": True},
        {"type": "http.request", "body": b"cd", "more_body": False},
    ]
    app = _slow_reader(body_timeout=0.05)
    assert await _served(app, incoming, pause=0.5) == [408]
