"""The suite's ``live_server`` serves the gateway as ``gateway serve`` does (red team r31).

It ran the gateway on uvicorn's own protocol, so a test through it saw uvicorn's answers
where production gives the gateway's (a fragment silently dropped, an unknown method a
plain-text 400): tests of the edge through the fixture tested the wrong server.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import pytest
from fastapi import FastAPI

from app.core.problems import problem_type
from app.main import create_app
from tests.conftest import LiveServer, make_settings

pytestmark = pytest.mark.integration


def _exchange(port: int, head: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    fields, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = fields.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ", 2)[1]), headers, body


@pytest.mark.parametrize(
    ("request_line", "code"),
    [
        (b"GET /v1/engagements/acme-2026/findings#top HTTP/1.1", "invalid_path"),
        (b"FOO /v1/engagements/acme-2026/findings HTTP/1.1", "bad_request"),
    ],
)
def test_the_gateway_under_live_server_answers_with_its_own_protocol(
    live_server: Callable[[FastAPI], LiveServer],
    test_key_env: str,
    request_line: bytes,
    code: str,
) -> None:
    server = live_server(create_app(make_settings()))
    head = request_line + b"\r\nHost: gw\r\nX-Request-ID: fixture-check-0001\r\n"
    status, headers, body = _exchange(server.port, head + b"Connection: close\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    problem = json.loads(body)
    assert problem["type"] == problem_type(code)
    # Refused before any request was made of the bytes: a fresh corr_id, on the answer too.
    assert problem["corr_id"] == headers["x-request-id"] != "fixture-check-0001"
