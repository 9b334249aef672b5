"""Per-request fast paths give exactly what the slower general code gave."""

from __future__ import annotations

import gzip

import httpx
import pytest

from app.ops import metrics
from app.orchestration.client import _with_propagation
from app.orchestration.transport import buffered_response
from tests.integration.ops.conftest import metric_value

RAW = [(b"Content-Type", b"application/json"), (b"X-Extra", b"1"), (b"X-Extra", b"2")]


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        (RAW, b'{"a": 1}'),
        (RAW, b""),
        ([*RAW, (b"Transfer-Encoding", b"chunked")], b"chunked body"),
        ([*RAW, (b"Content-Length", b"3")], b"abc"),
        ([*RAW, (b"Content-Encoding", b"gzip")], gzip.compress(b"zipped")),
    ],
)
def test_buffered_response_equals_httpx_content_response(
    headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    expected = httpx.Response(200, headers=headers, content=body)
    got = buffered_response(200, headers, body)
    assert got.status_code == expected.status_code
    assert got.headers.raw == expected.headers.raw
    assert got.content == expected.content
    assert got.text == expected.text


@pytest.mark.anyio
async def test_buffered_response_reads_and_closes_like_any_response() -> None:
    response = buffered_response(200, RAW, b"payload")
    assert await response.aread() == b"payload"
    assert [chunk async for chunk in response.aiter_bytes()] == [b"payload"]
    await response.aclose()
    assert response.is_closed


@pytest.mark.parametrize(
    "caller",
    [
        None,
        {"content-type": "application/json"},
        [("X-Trace", "a"), ("traceparent", "forged"), ("X-Request-ID", "forged"), ("x-a", "1")],
        [("x-auth-subject", "mallory"), ("Accept", "text/plain"), ("accept", "x")],
    ],
)
def test_propagated_headers_replace_caller_copies(caller: object) -> None:
    propagated = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "x-request-id": "c1"}
    propagated["x-auth-subject"] = "alice"
    reference = httpx.Headers(caller)  # type: ignore[arg-type]
    reference.update(propagated)
    merged = httpx.Headers(_with_propagation(httpx.Headers(caller), propagated))  # type: ignore[arg-type]
    assert sorted(merged.multi_items()) == sorted(reference.multi_items())


def test_cached_metric_children_keep_counting() -> None:
    labels = {"route": "/fast-path-test", "method": "GET", "status": "200"}
    before = metric_value(metrics.render().decode(), "gateway_http_requests_total", **labels)
    for _ in range(3):
        metrics.observe_request("/fast-path-test", "GET", 200, 0.001)
    after = metric_value(metrics.render().decode(), "gateway_http_requests_total", **labels)
    assert after == before + 3
    decision = {"result": "allow", "reason": "fast_path_test"}
    before = metric_value(metrics.render().decode(), "gateway_authz_decisions_total", **decision)
    metrics.count_decision("allow", "fast_path_test")
    metrics.count_decision("allow", "fast_path_test")
    after = metric_value(metrics.render().decode(), "gateway_authz_decisions_total", **decision)
    assert after == before + 2
