"""Slow clients against a real ``gateway serve``: header and body timeouts, connection cap."""

from __future__ import annotations

import contextlib
import json
import re
import select
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.edge.server import MAX_PIPELINED
from app.stubs.server import create_stub_app
from tests.conftest import LiveServer, signer
from tests.integration import raw_http
from tests.integration.ops.conftest import FINDINGS, metric_value, wait_until
from tests.integration.ops.test_serve_process import GatewayProcess
from tests.integration.raw_http import as_response, request_head
from tests.integration.test_gateway_e2e import assert_problem

pytestmark = pytest.mark.integration

FLOOD = 50
BOUND = 30.0  # seconds: a bound on the outcome, far above the 1 s timeout under test


@pytest.fixture
def serve(
    tmp_path: Path,
    live_server: Callable[[FastAPI], LiveServer],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[..., GatewayProcess]]:
    """``gateway serve`` (uvloop, httptools, our protocol) with edge settings from the env."""
    findings = live_server(create_stub_app("findings"))
    started: list[GatewayProcess] = []

    def start(
        header_timeout: float = 10,
        max_connections: int = 200,
        body_timeout: float = 30,
        body_min_rate: int = 1024,
        send_timeout: float = 60,
        **env: str,
    ) -> GatewayProcess:
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("GATEWAY_EDGE__SEND_TIMEOUT_SECONDS", str(send_timeout))
        monkeypatch.setenv("GATEWAY_EDGE__HEADER_TIMEOUT_SECONDS", str(header_timeout))
        monkeypatch.setenv("GATEWAY_EDGE__MAX_CONNECTIONS", str(max_connections))
        monkeypatch.setenv("GATEWAY_EDGE__BODY_TIMEOUT_SECONDS", str(body_timeout))
        monkeypatch.setenv("GATEWAY_EDGE__BODY_MIN_RATE_BYTES", str(body_min_rate))
        started.append(GatewayProcess(tmp_path, findings.url))
        return started[-1]

    yield start
    for process in started:
        process.close()


class SlowClient:
    """A connection that sends a request head one byte at a time and never finishes it."""

    HEAD = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Slow: " + b"a" * 4096

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.sent = 0
        self.answer = b""
        self.closed = False

    def drip(self) -> None:
        """One more byte; notice the server's answer or close."""
        if self.closed:
            return
        try:
            if select.select([self.sock], [], [], 0)[0]:
                chunk = self.sock.recv(65536)
                self.answer += chunk
                self.closed = not chunk
                if self.closed:
                    return
            self.sock.send(self.HEAD[self.sent : self.sent + 1])
            self.sent += 1
        except OSError:  # reset or broken pipe: the server closed it
            self.closed = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def signed_get(url: str) -> httpx.Response:
    with httpx.Client(base_url=url, auth=signer("alice"), timeout=10) as client:
        return client.get(FINDINGS)


def test_a_slow_header_flood_is_cut_off_while_signed_requests_are_served(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout=1, max_connections=200)
    flood = [SlowClient(gateway.port) for _ in range(FLOOD)]
    served: list[int] = []
    try:
        deadline = time.monotonic() + BOUND
        while not all(c.closed for c in flood) and time.monotonic() < deadline:
            for client in flood:
                client.drip()
            served.append(signed_get(gateway.url).status_code)
            time.sleep(0.1)
    finally:
        for client in flood:
            client.close()
    assert all(c.closed for c in flood), "slow-header connections were never cut off"
    assert served
    assert set(served) == {200}, "signed requests kept being served during the flood"
    timeouts = [c.answer for c in flood if c.answer]
    assert timeouts
    for answer in timeouts:
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert b"application/problem+json" in answer
        assert re.search(rb"\r\nx-request-id: [0-9a-f]{32}\r\n", answer)
    assert "header_timeout" in gateway.log_text()


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout=1, max_connections=200)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as idle:
        assert idle.recv(1024) == b""


def test_above_the_connection_cap_requests_get_a_503_problem(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(header_timeout=60, max_connections=4)
    idle = [socket.create_connection(("127.0.0.1", gateway.port), timeout=5) for _ in range(4)]
    refused: list[httpx.Response] = []
    try:

        def over_the_cap() -> bool:
            response = signed_get(gateway.url)
            refused.append(response)
            return response.status_code == 503

        wait_until(over_the_cap, timeout=BOUND)
    finally:
        for sock in idle:
            sock.close()
    answer = refused[-1]
    assert answer.status_code == 503
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:authz-gateway:problem:unavailable"
    assert answer.headers["retry-after"] == "1"
    # The request was parsed: it has a corr_id, and one log line carries it.
    corr_id = answer.json()["corr_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", corr_id)
    assert answer.headers["x-request-id"] == corr_id
    wait_until(lambda: signed_get(gateway.url).status_code == 200, timeout=BOUND)
    lines = [json.loads(line) for line in gateway.log_text().splitlines() if line.startswith("{")]
    over = [line for line in lines if line.get("corr_id") == corr_id]
    assert [(line["event"], line["served"], line["method"]) for line in over] == [
        ("over_capacity", False, "GET")
    ]
    assert over[0]["path"] == FINDINGS
    # uvicorn's own warning, without any of that, is not written beside it.
    assert not [line for line in lines if "Exceeded concurrency limit" in line.get("event", "")]
    # Counted like any answer, so an alert on the 5xx rate sees the load being shed.
    exposition = httpx.get(f"{gateway.url}/metrics", timeout=BOUND).text
    shed = {"route": "<unmatched>", "method": "GET", "status": "503"}
    assert metric_value(exposition, "gateway_http_requests_total", **shed) >= 1


def test_above_the_connection_cap_the_probes_and_metrics_are_still_served(
    serve: Callable[..., GatewayProcess],
) -> None:
    """A liveness probe that failed because the gateway was busy would have the pod
    restarted under load; each probe's connection is closed after its answer."""
    gateway = serve(header_timeout=60, max_connections=4)
    idle = [socket.create_connection(("127.0.0.1", gateway.port), timeout=5) for _ in range(4)]
    try:
        wait_until(lambda: signed_get(gateway.url).status_code == 503, timeout=BOUND)
        with httpx.Client(base_url=gateway.url, timeout=BOUND) as client:
            for path in ("/healthz", "/readyz", "/metrics"):
                response = client.get(path)
                assert response.status_code == 200, path
                assert response.headers["connection"] == "close", path
            # The caller's own well-formed X-Request-ID is the served probe's corr_id.
            named = client.get("/healthz", headers={"X-Request-ID": "probe-over-cap-1"})
            assert named.headers["x-request-id"] == "probe-over-cap-1"
            posted = client.post("/healthz")  # only GET and HEAD pass the cap
            assert posted.status_code == 503
            assert signed_get(gateway.url).status_code == 503
    finally:
        for sock in idle:
            sock.close()
    lines = [json.loads(line) for line in gateway.log_text().splitlines() if line.startswith("{")]
    probe = [line for line in lines if line.get("corr_id") == "probe-over-cap-1"]
    # One over_capacity line (served), then the edge's own summary of the request.
    assert [(line["event"], line.get("served")) for line in probe] == [
        ("over_capacity", True),
        ("request_completed", None),
    ]
    assert probe[1]["status"] == 200
    refused = [
        line for line in lines if line.get("event") == "over_capacity" and not line["served"]
    ]
    assert {line["method"] for line in refused} == {"POST", "GET"}


def assert_refusal(
    gateway: GatewayProcess, response: httpx.Response, status: int, code: str
) -> None:
    """Refused before the app ran: problem+json with a corr_id of its own, the same in
    ``X-Request-ID`` and on the refusal's one log line (uvicorn's context-free warning
    is not written)."""
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"] == f"urn:authz-gateway:problem:{code}"
    assert body["status"] == status
    corr_id = body["corr_id"]
    assert re.fullmatch(r"[0-9a-f]{32}", corr_id)
    assert response.headers["x-request-id"] == corr_id
    deadline = time.monotonic() + 5
    while True:  # the line is written at the end of the loop tick that answered
        text = gateway.log_text()
        lines = [json.loads(line) for line in text.splitlines() if line[:1] == "{"]
        logged = [e for e in lines if e.get("corr_id") == corr_id]
        if logged or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert [e["status"] for e in logged] == [status]
    assert "Invalid HTTP request received." not in text


# Bodies. The create-finding route reads its body while it authenticates (the digest).
NEW_FINDING = json.dumps({"title": "Open redirect", "severity": "low"}).encode()


def post_head(port: int, body: bytes, signed: bool = True, length: int | None = None) -> bytes:
    """The head of a POST of ``body`` to the findings route, signed as alice (or not)."""
    request = httpx.Request(
        "POST",
        f"http://127.0.0.1:{port}{FINDINGS}",
        content=body,
        headers={"content-type": "application/json"},
    )
    if signed:
        request = next(signer("alice").auth_flow(request))
    request.headers["content-length"] = str(len(body) if length is None else length)
    return request_head(request)


def read_answer(sock: socket.socket) -> httpx.Response:
    """One whole answer (it carries a Content-Length) read off a raw connection."""
    return as_response(*raw_http.read_answer(sock, bytearray(), BOUND))


def closed_within(sock: socket.socket, seconds: float, drip: bytes = b"") -> bool:
    """Whether the server closes ``sock`` within ``seconds`` while we send ``drip`` bytewise."""
    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < deadline:
        try:
            if select.select([sock], [], [], 0.2)[0] and not sock.recv(65536):
                return True
            if sent < len(drip):
                sock.send(drip[sent : sent + 1])
                sent += 1
        except OSError:  # reset or broken pipe: closed
            return True
    return False


def answer_before_the_body(sock: socket.socket, port: int) -> None:
    """An unsigned POST and 5 bytes of its body: a 401 before the rest is read."""
    sock.sendall(post_head(port, NEW_FINDING, signed=False) + NEW_FINDING[:5])
    assert_problem(read_answer(sock), 401, "unauthenticated")


def test_a_body_that_stalls_gets_a_408_problem_and_a_close(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(body_timeout=1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as sock:
        started = time.monotonic()
        sock.sendall(post_head(gateway.port, NEW_FINDING) + NEW_FINDING[:5])
        response = read_answer(sock)
        took = time.monotonic() - started
        assert closed_within(sock, BOUND)
    assert_problem(response, 408, "request_timeout")
    assert response.headers["connection"] == "close"
    assert took >= 1.0, "not before the timeout"
    log = gateway.log_text()
    assert '"event":"body_timeout"' in log
    assert '"status":408' in log  # the request summary counts it as a 408


def test_a_body_sent_in_pieces_at_a_steady_pace_is_served(
    serve: Callable[..., GatewayProcess],
) -> None:
    """Pauses shorter than the timeout, the whole body longer than it: served."""
    gateway = serve(body_timeout=1, body_min_rate=10)
    pieces = [NEW_FINDING[i : i + 5] for i in range(0, len(NEW_FINDING), 5)]
    assert len(pieces) * 0.25 > 1.0
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as sock:
        sock.sendall(post_head(gateway.port, NEW_FINDING))
        for piece in pieces:
            time.sleep(0.25)
            sock.sendall(piece)
        response = read_answer(sock)
    assert response.status_code == 201, response.text
    assert response.json()["title"] == "Open redirect"


def test_a_body_below_the_minimum_rate_gets_a_408_though_no_pause_is_long(
    serve: Callable[..., GatewayProcess],
) -> None:
    """One byte every 0.2 s: never a 1 s pause, but far below 1,000 bytes a second."""
    gateway = serve(body_timeout=1, body_min_rate=1000)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as sock:
        sock.sendall(post_head(gateway.port, NEW_FINDING))
        deadline = time.monotonic() + BOUND
        sent = 0
        while not select.select([sock], [], [], 0.2)[0]:
            assert time.monotonic() < deadline, "never answered"
            assert sent < len(NEW_FINDING) - 1, "the whole body went through"
            sock.send(NEW_FINDING[sent : sent + 1])
            sent += 1
        response = read_answer(sock)
    assert_problem(response, 408, "request_timeout")
    assert 3 <= sent < len(NEW_FINDING) - 1


def test_a_body_dribbled_after_an_early_answer_is_cut_off(
    serve: Callable[..., GatewayProcess],
) -> None:
    """Unsigned: 401 before the body is read; the rest may not hold the connection."""
    gateway = serve(body_timeout=1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as sock:
        sock.sendall(post_head(gateway.port, b"", signed=False, length=100_000) + b"{")
        assert_problem(read_answer(sock), 401, "unauthenticated")
        assert closed_within(sock, BOUND, drip=b"x" * 1000), "the dribble held the connection"
    assert '"after_answer":true' in gateway.log_text()


def test_the_rest_of_an_answered_body_sent_in_time_keeps_the_connection(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve(body_timeout=1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as sock:
        answer_before_the_body(sock, gateway.port)
        sock.sendall(NEW_FINDING[5:])
        time.sleep(1.5)  # past the body timeout: its timer was cancelled with the rest
        sock.sendall(post_head(gateway.port, NEW_FINDING) + NEW_FINDING)
        assert read_answer(sock).status_code == 201


def test_an_idle_connection_after_the_rest_of_an_answered_body_is_closed(
    serve: Callable[..., GatewayProcess],
) -> None:
    """The rest arrives after the answer, then nothing: closed by the keep-alive timeout."""
    gateway = serve(body_timeout=30)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as sock:
        answer_before_the_body(sock, gateway.port)
        time.sleep(0.2)
        sock.sendall(NEW_FINDING[5:])
        started = time.monotonic()
        assert closed_within(sock, BOUND), "an idle kept-alive connection was held"
        assert time.monotonic() - started < 25, "closed by the keep-alive timeout (5 s)"


def test_a_request_begun_with_the_rest_of_an_answered_body_is_not_cut_as_idle(
    serve: Callable[..., GatewayProcess],
) -> None:
    """The rest and the next head in one write, then a pause longer than the keep-alive
    timeout (5 s) before the next body: served, not closed as an idle connection."""
    gateway = serve(body_timeout=30, body_min_rate=1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=BOUND) as sock:
        answer_before_the_body(sock, gateway.port)
        sock.sendall(NEW_FINDING[5:] + post_head(gateway.port, NEW_FINDING))
        time.sleep(6)
        sock.sendall(NEW_FINDING)
        response = read_answer(sock)
    assert response.status_code == 201, response.text


CONTENT = "/v1/engagements/acme-2026/reports/R-0001/content"


def reports_gateway(
    serve: Callable[..., GatewayProcess], live_server: Callable[[FastAPI], LiveServer]
) -> GatewayProcess:
    """``gateway serve`` with a 1 s send timeout and a pass-through route to a reports
    stub whose pool holds one connection."""
    reports = live_server(create_stub_app("reports"))
    route = {
        "path": "/v1/engagements/{engagement_id}/reports/{report_id}/content",
        "service": "reports",
        "upstream_path": "/engagements/{engagement_id}/reports/{report_id}/content",
    }
    return serve(
        send_timeout=1,
        GATEWAY_SERVICES__REPORTS__URL=reports.url,
        GATEWAY_SERVICES__REPORTS__MAX_CONNECTIONS="1",
        GATEWAY_ORCHESTRATION__PASSTHROUGH=json.dumps([route]),
    )


def content_reader(gateway: GatewayProcess, size: int, *extra: str) -> socket.socket:
    """A connection with a small receive buffer that has asked for ``size`` bytes of report."""
    url = f"{gateway.url}{CONTENT}?size={size}"
    request = next(signer("carol").auth_flow(httpx.Request("GET", url)))
    for name, _, value in (field.partition(": ") for field in extra):
        request.headers[name] = value
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect
    sock.settimeout(BOUND)
    sock.connect(("127.0.0.1", gateway.port))
    sock.sendall(request_head(request))
    return sock


@pytest.mark.parametrize("extra", [(), ("connection: close",)], ids=["kept-alive", "closing"])
def test_a_client_that_stops_reading_is_dropped_and_the_service_connection_freed(
    serve: Callable[..., GatewayProcess],
    live_server: Callable[[FastAPI], LiveServer],
    extra: tuple[str, ...],
) -> None:
    """A pass-through stream of 16 MiB to a client that reads nothing: with the reports
    service's pool at one connection, the next request is served only if the stuck
    stream let its connection go; with or without ``Connection: close``. (A close that
    leaves bytes unsent is covered in tests/unit/test_coalescing_transport.py: when it
    happens depends on the kernel's buffers.)"""
    gateway = reports_gateway(serve, live_server)
    size = 16 * 1024 * 1024
    with content_reader(gateway, size, *extra) as sock:
        assert sock.recv(1024).startswith(b"HTTP/1.1 200 ")
        # The one service connection is the stuck stream's until the gateway drops it.
        served: list[httpx.Response] = []

        def next_request_served() -> bool:
            with httpx.Client(base_url=gateway.url, auth=signer("carol"), timeout=10) as client:
                served.append(client.get(CONTENT, params={"size": "1000"}))
            return served[-1].status_code == 200

        wait_until(next_request_served, timeout=BOUND)
        received = 0
        with contextlib.suppress(OSError):  # a reset, once what was buffered is read
            while chunk := sock.recv(65536):
                received += len(chunk)
    assert received < size, "the whole answer went out: the client was never cut off"
    assert len(served[-1].content) == 1000
    lines = [json.loads(line) for line in gateway.log_text().splitlines() if line.startswith("{")]
    timed_out = [line for line in lines if line.get("event") == "send_timeout"]
    assert timed_out
    # The line names the request whose answer was cut, as its summary line does.
    stuck = {line["corr_id"] for line in lines if line.get("event") == "request_completed"}
    assert timed_out[0].get("corr_id") in stuck


def test_a_client_that_reads_slowly_but_steadily_gets_the_whole_answer(
    serve: Callable[..., GatewayProcess], live_server: Callable[[FastAPI], LiveServer]
) -> None:
    """A few KiB every 20 ms: longer in all than the 1 s send timeout, never stalled."""
    gateway = reports_gateway(serve, live_server)
    size = 512 * 1024
    raw = b""
    started = time.monotonic()
    with content_reader(gateway, size) as sock:
        while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < size:
            chunk = sock.recv(32 * 1024)
            assert chunk, f"cut off after {len(raw)} bytes"
            raw += chunk
            time.sleep(0.02)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert len(body) == size
    assert time.monotonic() - started > 1.0, "the reading took longer than the send timeout"
    assert '"event":"send_timeout"' not in gateway.log_text()


# Found by an HTTP audit of the running gateway (each failed before its fix).


def test_blank_lines_between_requests_do_not_hold_a_connection(
    serve: Callable[..., GatewayProcess],
) -> None:
    """``\\r\\n`` every 0.2 s after an answer cancelled the keep-alive timer and armed
    nothing: the connection was held for ever. It gets the header timeout now."""
    gateway = serve(header_timeout=1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert read_answer(sock).status_code == 200
        assert closed_within(sock, 8, drip=b"\r\n" * 20)


def test_a_kept_alive_connection_outlives_the_header_timeout_between_requests(
    serve: Callable[..., GatewayProcess],
) -> None:
    """Only bytes that begin no request start the header timeout: after an answer the
    connection idles under the keep-alive timeout (5 s), not the header one (1 s here)."""
    gateway = serve(header_timeout=1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
            assert read_answer(sock).status_code == 200
            time.sleep(2)


def test_a_request_head_over_the_limit_gets_a_431_problem_and_a_close(
    serve: Callable[..., GatewayProcess],
) -> None:
    """A 64 MiB field held the event loop for seconds (httptools concatenates a value
    piece by piece); the head is refused past 64 KiB now, before it is parsed whole."""
    gateway = serve()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        with contextlib.suppress(OSError):  # the server may close before all is sent
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Big: " + b"a" * 70_000)
        answer = read_answer(sock)
        assert_refusal(gateway, answer, 431, "request_header_fields_too_large")
        assert closed_within(sock, 5)


@pytest.mark.parametrize("size", [70_000, 120_000])
def test_a_head_over_the_limit_that_arrives_whole_in_one_read_is_refused_too(
    serve: Callable[..., GatewayProcess], size: int
) -> None:
    """A whole head in one read was parsed before its size was weighed (a 120 KB head
    was a 200): the parsed target and fields are weighed when the head completes."""
    gateway = serve()
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"a" * 990) for i in range(size // 1000))
    head = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + fields + b"\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        with contextlib.suppress(OSError):
            sock.sendall(head)
        answer = read_answer(sock)
        assert_refusal(gateway, answer, 431, "request_header_fields_too_large")
        assert closed_within(sock, 5)
    # One request, one refusal line: the head weighed at its end was refused, and the
    # read's size then refused it again, with a second corr_id no answer carried.
    events = [json.loads(line).get("event") for line in gateway.log_text().splitlines()]
    assert events.count("head_too_large") == 1


def test_a_head_just_under_the_limit_is_served(serve: Callable[..., GatewayProcess]) -> None:
    gateway = serve()
    fields = b"".join(b"X-F%d: %s\r\n" % (i, b"a" * 990) for i in range(60))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n" + fields + b"\r\n")
        assert read_answer(sock).status_code == 200


def test_a_large_body_in_the_same_read_as_its_head_is_not_a_large_head(
    serve: Callable[..., GatewayProcess],
) -> None:
    body = json.dumps({"title": "x" * 200_000, "severity": "low"}).encode()
    gateway = serve()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(post_head(gateway.port, body) + body)
        assert read_answer(sock).status_code == 422  # the title is too long: parsed, not 431


def test_trailer_fields_are_not_taken_for_the_signed_head(
    serve: Callable[..., GatewayProcess],
) -> None:
    """uvicorn appended a chunked body's trailer to the request's headers: a trailer
    ``X-Request-ID`` became the corr_id, and an unsigned trailer could fill a header
    a route requires. Trailers are discarded now."""
    gateway = serve()
    head = post_head(gateway.port, NEW_FINDING)
    head = head.replace(
        f"content-length: {len(NEW_FINDING)}\r\n".encode(), b"transfer-encoding: chunked\r\n"
    )
    assert b"transfer-encoding: chunked" in head
    chunked = f"{len(NEW_FINDING):x}\r\n".encode() + NEW_FINDING + b"\r\n0\r\n"
    trailer = b"X-Request-ID: injected-by-trailer-01\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + chunked + trailer)
        answer = read_answer(sock)
    assert answer.status_code == 201, answer.text
    assert answer.headers["x-request-id"] != "injected-by-trailer-01"


@pytest.mark.parametrize("coding", [b"chunked", b"gzip, chunked", b"identity"])
def test_an_http10_request_with_transfer_encoding_is_refused_and_closed(
    serve: Callable[..., GatewayProcess], coding: bytes
) -> None:
    """httptools read an HTTP/1.0 request's body as chunked; a 1.0 proxy in front frames
    it by Content-Length or the close instead: two readings of one body. RFC 9112 6.1:
    faulty framing, refused and closed before the app (or a signature check) runs."""
    gateway = serve()
    head = post_head(gateway.port, NEW_FINDING).replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    head = head.replace(
        f"content-length: {len(NEW_FINDING)}\r\n".encode(),
        b"transfer-encoding: " + coding + b"\r\nconnection: keep-alive\r\n",
    )
    assert b" HTTP/1.0\r\n" in head
    assert b"transfer-encoding: " + coding in head
    chunked = f"{len(NEW_FINDING):x}\r\n".encode() + NEW_FINDING + b"\r\n0\r\n\r\n"
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + chunked + smuggled)
        answer = read_answer(sock)
        assert_refusal(gateway, answer, 400, "bad_request")
        assert "HTTP/1.0" in answer.json()["detail"]
        assert answer.headers["connection"] == "close"
        assert closed_within(sock, 5)  # the pipelined GET got no answer
    # The gateway serves the next connection as before.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(smuggled)
        assert read_answer(sock).status_code == 200


def chunked_head(port: int, coding: bytes = b"chunked") -> bytes:
    """The signed findings POST's head, its body announced with ``Transfer-Encoding``."""
    head = post_head(port, NEW_FINDING)
    length = f"content-length: {len(NEW_FINDING)}\r\n".encode()
    assert length in head
    return head.replace(length, b"transfer-encoding: " + coding + b"\r\n")


CHUNKED_FINDING = f"{len(NEW_FINDING):x}\r\n".encode() + NEW_FINDING + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("coding", "status", "code"),
    [
        (b"gzip", 400, "bad_request"),
        (b"identity", 400, "bad_request"),
        (b"xchunked", 400, "bad_request"),
        (b"chunked;q=1", 400, "bad_request"),
        (b"gzip, chunked", 501, "not_implemented"),
    ],
)
def test_a_transfer_coding_other_than_chunked_is_refused_before_the_app(
    serve: Callable[..., GatewayProcess], coding: bytes, status: int, code: str
) -> None:
    """RFC 9112 6.3: a request whose Transfer-Encoding does not end in chunked has no
    length; a signed one waited for its body for body_timeout, then got a 408. A coding
    the gateway does not decode (gzip before chunked) reached the service still coded."""
    gateway = serve()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(chunked_head(gateway.port, coding) + CHUNKED_FINDING)
        assert_refusal(gateway, read_answer(sock), status, code)
        assert closed_within(sock, 5)


@pytest.mark.parametrize(
    "body",
    [
        b"zz\r\n" + NEW_FINDING + b"\r\n0\r\n\r\n",  # not a chunk size
        CHUNKED_FINDING.replace(b"\r\n", b"\n"),  # chunk lines without CR
    ],
)
def test_a_running_request_whose_chunked_body_breaks_gets_its_400_at_once(
    serve: Callable[..., GatewayProcess], body: bytes
) -> None:
    """The parser's error was held back until the request was answered, and the request
    waited for a body that could never arrive: 408 after body_timeout. Now its 400, with
    its corr_id, at once; the summary line counts it as a 400."""
    gateway = serve()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(chunked_head(gateway.port) + body)
        answer = read_answer(sock)
        assert answer.status_code == 400
        problem = answer.json()
        assert problem["type"] == "urn:authz-gateway:problem:bad_request"
        assert problem["corr_id"] == answer.headers["x-request-id"]
        assert answer.headers["connection"] == "close"
        assert closed_within(sock, 5)
    lines = [
        json.loads(line) for line in gateway.log_path.read_text().splitlines() if line[:1] == "{"
    ]
    summary = [e for e in lines if e.get("event") == "request_completed"]
    assert summary[-1]["status"] == 400
    assert summary[-1]["corr_id"] == problem["corr_id"]
    assert not [e for e in lines if e.get("event") == "finding_created"]


def test_an_answered_request_whose_body_then_breaks_gets_no_second_answer(
    serve: Callable[..., GatewayProcess],
) -> None:
    """An unsigned POST is refused before its body is read; its body's framing breaks
    after: the connection closes, without an answer to no request."""
    gateway = serve()
    head = post_head(gateway.port, NEW_FINDING, signed=False)
    head = head.replace(
        f"content-length: {len(NEW_FINDING)}\r\n".encode(), b"transfer-encoding: chunked\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head)
        buffer = bytearray()
        assert_problem(
            as_response(*raw_http.read_answer(sock, buffer, BOUND)), 401, "unauthenticated"
        )
        sock.sendall(b"zz\r\n")
        assert closed_within(sock, 5)
        assert buffer == bytearray()
    lines = [json.loads(line) for line in gateway.log_text().splitlines() if line[:1] == "{"]
    refused = next(e for e in lines if e.get("event") == "request_completed" and e["status"] == 401)
    broken = [e for e in lines if e.get("event") == "body_malformed"]
    assert [(e.get("corr_id"), e["response_started"]) for e in broken] == [
        (refused["corr_id"], True)  # the line names the request it belongs to
    ]


SMUGGLED = b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"


@pytest.mark.parametrize("upgrade", [b"h2c", b"websocket"])
def test_a_request_that_asks_to_upgrade_cannot_carry_a_body(
    serve: Callable[..., GatewayProcess], upgrade: bytes
) -> None:
    """llhttp ended an upgrade request at its head: its body (sent in a later segment)
    was then parsed and answered as a request of its own (two readings of one body)."""
    gateway = serve()

    def probes_answered() -> int:  # serve() itself waits on /healthz
        lines = [json.loads(line) for line in gateway.log_text().splitlines() if line[:1] == "{"]
        return len([e for e in lines if e.get("path") == "/healthz"])

    before = probes_answered()
    head = post_head(gateway.port, SMUGGLED).replace(
        b"\r\n\r\n", b"\r\nconnection: Upgrade\r\nupgrade: " + upgrade + b"\r\n\r\n", 1
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head)
        time.sleep(0.2)  # the body in a segment of its own
        with contextlib.suppress(OSError):
            sock.sendall(SMUGGLED)
        assert_refusal(gateway, read_answer(sock), 400, "bad_request")
        assert closed_within(sock, 5)
    assert probes_answered() == before, "the body was answered as a request"


def test_a_request_that_asks_to_upgrade_without_a_body_is_served_as_http_1_1(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\n"
                     b"Upgrade: h2c\r\n\r\n")  # fmt: skip
        assert read_answer(sock).status_code == 200


@pytest.mark.parametrize("target", [b"/healthz#frag", b"/v1/engagements/acme-2026/findings#x"])
def test_a_request_target_with_a_fragment_is_refused(
    serve: Callable[..., GatewayProcess], target: bytes
) -> None:
    """httptools dropped the fragment: the path routed was not the target sent (and
    signed). RFC 9112 3.2: a request target has none; 400 invalid_path and a close."""
    gateway = serve()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert_refusal(gateway, read_answer(sock), 400, "invalid_path")
        assert closed_within(sock, 5)


def test_a_pipeline_deeper_than_the_cap_is_answered_in_part_then_refused(
    serve: Callable[..., GatewayProcess],
) -> None:
    """5,000 pipelined requests in one write were all parsed and queued at once (an
    audit grew one process by 700 MB from one connection). The queue is capped: the
    requests queued are answered in order, then a 503 for the rest, then the close."""
    gateway = serve()
    probe = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        with contextlib.suppress(OSError):  # the server closes before it reads it all
            sock.sendall(probe * 5_000)
        buffer = bytearray()
        answers = []
        while not answers or answers[-1].status_code == 200:
            answers.append(as_response(*raw_http.read_answer(sock, buffer, BOUND)))
        assert closed_within(sock, 5)
    answered = len(answers) - 1
    assert MAX_PIPELINED < answered < 5_000, answered  # the rest were never read
    assert_refusal(gateway, answers[-1], 503, "unavailable")


REFUSED_HEADS = {
    "http10-te": b"POST /healthz HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",
    "malformed": b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
    "http20-te": b"POST /healthz HTTP/2.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\n",
}


@pytest.mark.parametrize("refused", sorted(REFUSED_HEADS))
def test_a_refusal_pipelined_after_a_request_comes_after_its_answer(
    serve: Callable[..., GatewayProcess], refused: str
) -> None:
    """An audit found the refusal written at once: the POST before it ran (a finding
    was created) but its 201 never reached the client. Answers go in request order:
    the 201, then the refusal, then the close."""
    gateway = serve()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(post_head(gateway.port, NEW_FINDING) + NEW_FINDING + REFUSED_HEADS[refused])
        buffer = bytearray()
        first = as_response(*raw_http.read_answer(sock, buffer, BOUND))
        assert first.status_code == 201, first.text
        second = as_response(*raw_http.read_answer(sock, buffer, BOUND))
        assert_refusal(gateway, second, 400, "bad_request")
        assert closed_within(sock, 5)


def test_a_refusal_waits_for_every_pipelined_answer_before_it(
    serve: Callable[..., GatewayProcess],
) -> None:
    gateway = serve()
    probe = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    pipelined = post_head(gateway.port, NEW_FINDING) + NEW_FINDING + probe
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(pipelined + REFUSED_HEADS["malformed"])
        buffer = bytearray()
        statuses = [as_response(*raw_http.read_answer(sock, buffer, BOUND)) for _ in range(3)]
        assert [r.status_code for r in statuses] == [201, 200, 400]
        assert closed_within(sock, 5)


@pytest.mark.parametrize("version", [b"2.0", b"0.9"])
def test_a_request_line_of_another_http_version_is_refused_and_closed(
    serve: Callable[..., GatewayProcess], version: bytes
) -> None:
    """httptools framed "HTTP/2.0" and "HTTP/0.9" request lines as 1.1, a chunked body
    included (found by an audit after the 1.0 fix): any version but 1.0 and 1.1 is a
    400 and a close, before the app runs."""
    gateway = serve()
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n"
    chunk = f"{len(smuggled):x}\r\n".encode() + smuggled + b"\r\n0\r\n\r\n"
    head = (
        b"POST /v1/engagements/acme-2026/findings HTTP/" + version + b"\r\nHost: gateway\r\n"
        b"Connection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + chunk + b"GET /metrics HTTP/1.1\r\nHost: gateway\r\n\r\n")
        assert_refusal(gateway, read_answer(sock), 400, "bad_request")
        assert closed_within(sock, 5)


def test_an_http10_request_with_a_content_length_is_served(
    serve: Callable[..., GatewayProcess],
) -> None:
    """The refusal above is about Transfer-Encoding, not HTTP/1.0: a 1.0 POST framed by
    Content-Length is created as a 1.1 one is."""
    gateway = serve()
    head = post_head(gateway.port, NEW_FINDING).replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head + NEW_FINDING)
        answer = read_answer(sock)
    assert answer.status_code == 201, answer.text


def test_a_websocket_upgrade_is_an_ordinary_request_through_the_edge(
    serve: Callable[..., GatewayProcess],
) -> None:
    """With a WebSocket implementation loaded, an upgrade skipped the edge: no path
    normalisation, a plain-text 403. There is none now: the edge answers as usual."""
    gateway = serve()
    upgrade = (
        b"GET /v1/engagements/../../../x HTTP/1.1\r\nHost: gateway\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(upgrade)
        answer = read_answer(sock)
    assert answer.status_code == 400
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["type"] == "urn:authz-gateway:problem:invalid_path"
    # Logged as any request: one line with its corr_id, and none without one (uvicorn
    # warned twice per upgrade request, "Unsupported upgrade request." and a "No
    # supported WebSocket library" hint, though ws="none" is the gateway's choice).
    corr_id = answer.json()["corr_id"]
    deadline = time.monotonic() + 5
    while corr_id not in gateway.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    lines = [json.loads(line) for line in gateway.log_text().splitlines() if line[:1] == "{"]
    during = lines[next(n for n, e in enumerate(lines) if "Uvicorn running" in e["event"]) + 1 :]
    assert [e["event"] for e in during if e.get("corr_id") == corr_id] == ["request_completed"]
    assert [e["event"] for e in during if "corr_id" not in e] == []
