"""What a real ``gateway serve`` writes: whole answers, in order, 100 Continue on time.

The server protocol joins the writes of one loop tick (``CoalescingTransport``,
``app/edge/server.py``); these talk to it over raw sockets.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.stubs.server import create_stub_app
from tests.conftest import LiveServer, signer
from tests.integration.ops.test_serve_process import GatewayProcess
from tests.integration.raw_http import read_answer, request_head

pytestmark = pytest.mark.integration

FINDINGS = "/v1/engagements/acme-2026/findings"


@pytest.fixture
def gateway(
    tmp_path: Path, live_server: Callable[[FastAPI], LiveServer]
) -> Iterator[GatewayProcess]:
    findings = live_server(create_stub_app("findings"))
    process = GatewayProcess(tmp_path, findings.url)
    yield process
    process.close()


def test_pipelined_requests_get_whole_answers_in_order(gateway: GatewayProcess) -> None:
    ask = b"GET /healthz HTTP/1.1\r\nHost: gateway\r\nX-Request-ID: req-%d-abcdef\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"".join(ask % n for n in range(5)))
        buffer = bytearray()
        answers = [read_answer(sock, buffer) for _ in range(5)]
    for n, (head, body) in enumerate(answers):
        assert head.startswith(b"HTTP/1.1 200 ")
        assert f"x-request-id: req-{n}-abcdef".encode() in head
        assert b'"status"' in body
    assert buffer == b""  # nothing more than the five answers


def test_a_signed_upload_gets_100_continue_before_it_sends_its_body(
    gateway: GatewayProcess,
) -> None:
    body = b'{"title": "Open redirect on /login", "severity": "low"}'
    request = httpx.Request(
        "POST",
        gateway.url + FINDINGS,
        content=body,
        headers={"content-type": "application/json"},
    )
    signed = next(signer("alice").auth_flow(request))
    signed.headers["expect"] = "100-continue"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(request_head(signed))
        interim = sock.recv(65536)  # the gateway verified the head and now wants the body
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(body)
        buffer = bytearray(interim.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n"))
        head, answer = read_answer(sock, buffer)
    assert head.startswith(b"HTTP/1.1 201 "), head
    assert b'"created_by":"alice"' in answer.replace(b" ", b"")


@pytest.mark.parametrize(
    "head",
    [
        b"GET /v1/engagements/acme-2026/reports/R-1/content?q=\xff HTTP/1.1\r\nHost: g\r\n\r\n",
        b"NOT A REQUEST LINE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Field\r\n\r\n",
    ],
)
def test_what_httptools_cannot_parse_gets_a_400_problem_and_a_close(
    gateway: GatewayProcess, head: bytes
) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):  # the gateway closes after answering
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 400 Bad Request"
    fields, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in fields
    assert b"connection: close" in fields
    problem = json.loads(body)
    assert problem["type"] == "urn:authz-gateway:problem:bad_request"
    assert problem["status"] == 400
    # Its own corr_id, in the answer and on the one line that logs the refusal.
    assert f"x-request-id: {problem['corr_id']}".encode() in fields
    logged = [
        json.loads(line)
        for line in gateway.log_text().splitlines()
        if problem["corr_id"] in line and line[:1] == "{"
    ]
    assert [e["event"] for e in logged] == ["request_malformed"]
    assert "Invalid HTTP request received." not in gateway.log_text()
