"""Stub services as integration-testing teams use them: refusals, scoping, recording,
signatures and lifecycle, measured against real stubs on 127.0.0.1."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app.authn.keys import KeyRing, SigningKey
from app.domain.identity import Identity
from app.downstream.propagation import CallContext, propagation_headers, sign_outbound
from app.stubs.faults import FaultConfig, FaultState
from app.stubs.server import create_stub_app, stub_config, stub_server
from tests.conftest import REPO, LiveServer, free_port
from tests.integration.raw_http import as_response, read_answer

pytestmark = pytest.mark.integration

ENGAGEMENT = "/engagements/acme-2026"
PROBLEM = "application/problem+json"
FINDING = {"severity": "low", "created_by": "alice"}
KEY = SigningKey("gateway-engagements", b"gateway-outbound-test-secret-0123456789abcdef")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'{"error_rate": NaN}', 400),
        (b'{"hang_max_seconds": Infinity}', 400),
        (b'{"seed": 1e400}', 400),
        (b"{bad", 400),
        (b"[]", 422),
        (b'{"latency_ms": -1}', 422),
        (b'{"nope": 1}', 422),
    ],
)
def test_a_bad_fault_body_is_refused_with_problem_json_never_500(
    live_server: Callable[[FastAPI], LiveServer], body: bytes, status: int
) -> None:
    """Found by an audit (h45): ``NaN`` or ``Infinity`` (which Python's JSON reader takes)
    out of range made the stub's 422 unrenderable: a 500 and a dropped connection, and
    the faults stayed as they were without a word the caller could act on."""
    server = live_server(create_stub_app("engagements"))
    headers = {"content-type": "application/json"}
    with httpx.Client(base_url=server.url, timeout=5) as client:
        answers = [client.post("/_faults", content=body, headers=headers)]
        answers.append(client.patch("/_faults", content=body, headers=headers))
        faults = client.get("/_faults").json()
    for answer in answers:
        assert answer.status_code == status, answer.text
        assert answer.headers["content-type"] == PROBLEM
        assert answer.json()["detail"]
    assert (faults["error_rate"], faults["latency_ms"]) == (0, 0)


@pytest.mark.parametrize("body", [b"[]", b'"fail_next"', b"1", b"null"])
def test_a_fault_body_that_is_no_object_is_a_validation_error_listing_why(
    live_server: Callable[[FastAPI], LiveServer], body: bytes
) -> None:
    """resilience.md: a body that is not an object is a ``422`` listing where and what
    (``errors``), as an unknown field is; it was a bare ``http_error`` without them."""
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        answers = [client.post("/_faults", content=body), client.patch("/_faults", content=body)]
    for answer in answers:
        assert answer.status_code == 422, answer.text
        problem = answer.json()
        assert problem["type"].endswith(":validation_error")
        assert [error["loc"] for error in problem["errors"]] == [["body"]]


def test_faults_set_with_curl_s_default_content_type_apply(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """``curl -d`` sends ``application/x-www-form-urlencoded``: the JSON body was read as
    one string and refused with "Input should be a valid dictionary"."""
    server = live_server(create_stub_app("engagements"))
    form = {"content-type": "application/x-www-form-urlencoded"}
    with httpx.Client(base_url=server.url, timeout=5) as client:
        body = b'{"fail_next": 1, "fail_status": 502}'
        set_ = client.patch("/_faults", content=body, headers=form)
        failed = client.get(ENGAGEMENT)
    assert set_.status_code == 200, set_.text
    assert failed.status_code == 502


def test_a_stub_route_refuses_a_bad_body_as_a_service_would(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Found by an audit (h45): a create with a body that was not JSON, not an object or
    without a field was a 500 (``JSONDecodeError``, ``KeyError``, ``AttributeError``)."""
    findings = live_server(create_stub_app("findings"))
    reports = live_server(create_stub_app("reports"))
    headers = {"content-type": "application/json"}
    create = f"{findings.url}{ENGAGEMENT}/findings"
    answers = {
        "not json": httpx.post(create, content=b"{", headers=headers),
        "no title": httpx.post(create, json={"severity": "low"}),
        "a list": httpx.post(f"{reports.url}{ENGAGEMENT}/reports", json=[]),
    }
    statuses = {why: answer.status_code for why, answer in answers.items()}
    assert statuses == {"not json": 400, "no title": 422, "a list": 422}
    assert {answer.headers["content-type"] for answer in answers.values()} == {PROBLEM}
    assert "title" in answers["no title"].json()["detail"]


def test_a_stub_s_own_refusal_is_problem_json(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    server = live_server(create_stub_app("engagements"))
    missing = httpx.get(server.url + "/engagements/nope")
    assert (missing.status_code, missing.headers["content-type"]) == (404, PROBLEM)
    assert missing.json()["detail"] == "no such engagement"


def test_a_path_prefix_that_could_match_no_path_is_refused(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Found by an audit (h45): ``path_prefix: "engagements"`` (no leading slash) was
    taken, and the fault it scoped silently never applied: every request was served."""
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        refused = client.post("/_faults", json={"fail_next": 1, "path_prefix": "engagements"})
        scoped = client.post("/_faults", json={"fail_next": 1, "path_prefix": ENGAGEMENT})
        outside = client.get("/engagements")
        inside = client.get(ENGAGEMENT)
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["loc"] == ["body", "path_prefix"]
    assert scoped.status_code == 200
    assert (outside.status_code, inside.status_code) == (200, 503)


def test_seen_lists_the_query_and_every_value_of_a_repeated_field(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Found by an audit (h45): ``/_seen`` kept only the first value of a repeated field
    (a second ``X-Auth-Subject`` was invisible) and never the query string."""
    server = live_server(create_stub_app("findings"))
    head = (
        f"GET {ENGAGEMENT}/findings?page=2&q=%2F HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "X-Auth-Subject: alice\r\nX-Auth-Subject: mallory\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head.encode())
        assert sock.recv(12) == b"HTTP/1.1 200"
    [entry] = httpx.get(server.url + "/_seen").json()
    assert entry["query"] == "page=2&q=%2F"
    assert entry["headers"]["x-auth-subject"] == "alice, mallory"


def test_a_stub_without_a_key_does_not_call_a_signed_request_unsigned(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Found by an audit (h45): a stub started without ``--verify-key-id`` listed every
    request as ``signature: absent``, signed or not: a test reading ``/_seen`` concluded
    that the gateway had not signed its call."""
    server = live_server(create_stub_app("engagements"))
    signed = {"signature-input": 'gateway=("@method");keyid="k"', "signature": "gateway=:AAAA:"}
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.get(ENGAGEMENT, headers=signed)
        client.get(ENGAGEMENT)
        seen = client.get("/_seen").json()
    assert [entry["signature"] for entry in seen] == ["unverified", "absent"]


def _stub_process(
    port: int, *flags: str, stderr: int = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """``gateway stub`` as a team runs it, ready (its ``/_health`` answers) within 30 s."""
    argv = [sys.executable, "-m", "app.cli.main", "stub", "--name", "engagements"]
    proc = subprocess.Popen([*argv, "--port", str(port), *flags], cwd=REPO, stderr=stderr)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            httpx.get(f"http://127.0.0.1:{port}/_health", timeout=1)
            return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the stub did not become ready")


def test_sigterm_stops_a_stub_holding_a_hung_request_promptly() -> None:
    """Found by an audit (h45): SIGTERM waited for every hung request to reach its
    ``hang_max_seconds`` (up to 600 s; 30 by default): ``gateway demo`` gives its
    stubs 10 s, and a test's teardown hung as long."""
    port = free_port()
    proc = _stub_process(port, "--hang")
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            url = f"http://127.0.0.1:{port}{ENGAGEMENT}"
            hung = pool.submit(httpx.get, url, timeout=40)
            stats = f"http://127.0.0.1:{port}/_stats"
            while not httpx.get(stats, timeout=5).json()["faulted"]:
                time.sleep(0.05)
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
            took = time.monotonic() - started
            with pytest.raises(httpx.TransportError):
                hung.result(timeout=20)  # cut off unanswered
    finally:
        proc.kill()
        proc.wait(timeout=10)
    assert took < 10, f"SIGTERM took {took:.1f} s"


@pytest.mark.parametrize("name", ["findings", "engagements", "reports"])
def test_reset_puts_a_stub_back_as_it_started(
    live_server: Callable[[FastAPI], LiveServer], name: str
) -> None:
    """Found by an audit (h45): nothing cleared ``/_seen``, ``/_stats``, idempotency keys
    or the data a test changed (a created finding, a closed engagement, a freeze): the
    next test met the last one's state unless the stub was restarted."""
    start = FaultConfig(latency_ms=1, seed=3)
    server = live_server(create_stub_app(name, seed=3, faults=start))
    fresh = live_server(create_stub_app(name, seed=3, faults=start))
    key = {"idempotency-key": "reset-0001"}
    views = [ENGAGEMENT, f"{ENGAGEMENT}/findings", f"{ENGAGEMENT}/reports", "/_frozen"]
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.post(f"{ENGAGEMENT}/findings", json={**FINDING, "title": "old"}, headers=key)
        client.post(f"{ENGAGEMENT}/findings/freeze")
        client.post(f"{ENGAGEMENT}/close", headers=key)
        client.post(f"{ENGAGEMENT}/reports", json={"kind": "final"}, headers=key)
        client.post("/_faults", json={"fail_next": 1, "error_rate": 0.5})
        client.get(ENGAGEMENT)
        reset = client.post("/_reset")
        seen, stats = client.get("/_seen").json(), client.get("/_stats").json()
        faults = client.get("/_faults").json()
        after = {path: client.get(path).json() for path in views}
        again = client.post(f"{ENGAGEMENT}/findings", json={**FINDING, "title": "new"}, headers=key)
    expected = {path: httpx.get(fresh.url + path).json() for path in views}
    assert reset.status_code == 204
    assert after == expected
    assert faults == start.model_dump()
    assert (seen, stats) == ([], {"requests": 0, "faulted": 0})
    if name == "findings":
        assert again.json()["title"] == "new", "the idempotency key was forgotten"


def test_a_stub_remembers_the_last_idempotency_keys_and_uploads_only(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Every keyed write's answer and every upload's progress were kept for the stub's
    life: a long integration run grew its memory without end. Now the newest are kept
    (10,000 keys, 1,000 uploads), the oldest forgotten first; here the caps are 2."""
    app = create_stub_app("findings")
    app.state.idempotent.capacity = app.state.uploads.capacity = 2
    server = live_server(app)
    with httpx.Client(base_url=server.url, timeout=5) as client:

        def create(key: str, title: str) -> httpx.Response:
            headers = {"idempotency-key": key}
            return client.post(
                f"{ENGAGEMENT}/findings", json={**FINDING, "title": title}, headers=headers
            )

        first = [create(key, key) for key in ("k-1", "k-2", "k-3")]
        again = {key: create(key, f"{key} again") for key in ("k-3", "k-1")}
        for size in (1, 2, 3):
            client.post(f"{ENGAGEMENT}/evidence", content=b"e" * size)
    assert again["k-3"].json() == first[2].json(), "the newest key is replayed"
    assert again["k-1"].json()["title"] == "k-1 again", "the oldest key is forgotten"
    assert [u["received"] for u in app.state.uploads] == [2, 3]


def _signed(url: str, subject: str = "bob") -> httpx.Request:
    context = CallContext(Identity(subject, (), "proxy"), "acme-2026")
    request = httpx.Request("GET", url, headers=propagation_headers(context))
    sign_outbound(request, KEY)
    return request


def test_a_stub_tells_a_replayed_signature_from_a_fresh_one(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Found by an audit (h45): the stub checked the gateway's signature without its
    nonce, so the same signed request sent twice was ``valid`` both times (and served
    under ``require_signature``): a gateway that re-sent a signature, which its docs say
    it never does, passed every stub-based test."""
    app = create_stub_app("engagements", keyring=KeyRing([KEY]), require_signature=True)
    server = live_server(app)
    with httpx.Client(timeout=5) as client:
        request = _signed(server.url + ENGAGEMENT)
        first, again = client.send(request), client.send(request)
        other = client.send(_signed(server.url + ENGAGEMENT, "carol"))
        seen = client.get(server.url + "/_seen").json()
    assert (first.status_code, again.status_code, other.status_code) == (200, 401, 200)
    assert [(s["signature"], s["subject"]) for s in seen] == [
        ("valid", "bob"),
        ("replayed", "bob"),
        ("valid", "carol"),
    ]


def test_a_hung_request_listed_twice_is_not_taken_for_its_own_replay(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    app = create_stub_app("engagements", keyring=KeyRing([KEY]), require_signature=True)
    server = live_server(app)
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        httpx.Client(base_url=server.url, timeout=10) as client,
        httpx.Client(timeout=10) as caller,
    ):
        client.post("/_faults", json={"hang": True})
        pending = pool.submit(caller.send, _signed(server.url + ENGAGEMENT))
        while not client.get("/_stats").json()["faulted"]:
            time.sleep(0.02)
        client.delete("/_faults")
        released = pending.result(timeout=10)
        seen = client.get("/_seen").json()
    assert released.status_code == 200
    assert [(s["fault"], s["signature"]) for s in seen] == [("hang", "valid"), (None, "valid")]


def _raw_answer(port: int, head: str, body: bytes = b"") -> httpx.Response:
    """One answer to a request sent on a raw socket, its body left as given (unfinished)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        return as_response(*read_answer(sock, bytearray()))


def test_a_body_over_the_cap_is_refused_listed_and_takes_no_owed_failure(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Found by an audit (h45): the stubs read every body whole into memory, however
    large: one huge upload could use up the stub's memory."""
    server = live_server(create_stub_app("findings", max_body_bytes=1000))
    upload = f"POST {ENGAGEMENT}/evidence HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    chunked = "Transfer-Encoding: chunked\r\n\r\n"
    over = b"400\r\n" + b"a" * 0x400 + b"\r\n"  # one chunk over the cap, the body unfinished
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/_faults", json={"fail_next": 1})
        declared = _raw_answer(server.port, upload + "Content-Length: 1001\r\n\r\n")
        streamed = _raw_answer(server.port, upload + chunked, over)
        control = _raw_answer(server.port, "POST /_faults HTTP/1.1\r\nHost: x\r\n" + chunked, over)
        owed = client.get(ENGAGEMENT + "/findings")
        within = client.post(ENGAGEMENT + "/evidence", content=b"a" * 1000)
        seen, stats = client.get("/_seen").json(), client.get("/_stats").json()
    for refused in (declared, streamed, control):
        assert (refused.status_code, refused.headers["content-type"]) == (413, PROBLEM)
        assert "1000 bytes" in refused.json()["detail"]
    assert owed.status_code == 503, "the refused requests took the owed failure"
    assert within.status_code == 201
    assert [(s["method"], s["fault"]) for s in seen] == [
        ("POST", "body_too_large"),
        ("POST", "body_too_large"),
        ("GET", "status 503"),
        ("POST", None),
    ]
    assert stats == {"requests": 4, "faulted": 1}


def test_a_chunked_body_over_the_cap_under_a_fault_gives_its_owed_failure_back(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """A body of unknown length is found too large only as it is read, after the owed
    failure was decided on its arrival: the failure goes back, to the next request."""
    server = live_server(create_stub_app("findings", max_body_bytes=1000))
    upload = f"POST {ENGAGEMENT}/evidence HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    over = b"3e9\r\n" + b"a" * 1001 + b"\r\n"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.post("/_faults", json={"fail_next": 1, "hang": True, "latency_ms": 10})
        streamed = _raw_answer(server.port, upload, over)
        client.patch("/_faults", json={"hang": False})  # the owed failure stays owed
        owed = client.get(ENGAGEMENT + "/findings")
        stats = client.get("/_stats").json()
    assert streamed.status_code == 413
    assert owed.status_code == 503
    assert stats == {"requests": 2, "faulted": 1}


def test_a_chunked_body_over_the_cap_gives_its_roll_of_the_dice_back(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Its roll was kept: each refused upload took one from the seeded dice, so the
    answered requests no longer failed as the seed says, and a failure rolled for a
    request answered 413 reached no caller. Now the answered requests fail exactly as
    a stub that never saw the uploads (``FaultState`` with the same seed) rolls."""
    faults = FaultConfig(error_rate=0.5, seed=5)
    server = live_server(create_stub_app("findings", faults=faults, max_body_bytes=1000))
    upload = f"POST {ENGAGEMENT}/evidence HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    over = b"3e9\r\n" + b"a" * 1001 + b"\r\n"
    answered, refused = [], []
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for _ in range(8):
            refused.append(_raw_answer(server.port, upload, over).status_code)
            answered.append(client.get(ENGAGEMENT + "/findings").status_code)
        stats = client.get("/_stats").json()
    dice = FaultState(faults)
    expected = [dice.failure_status() or 200 for _ in answered]
    assert refused == [413] * 8
    assert answered == expected
    assert stats == {"requests": 16, "faulted": expected.count(500)}


def test_gateway_stub_takes_its_body_cap_from_a_flag_32_mib_by_default() -> None:
    port, default_port = free_port(), free_port()
    capped, default = _stub_process(port, "--max-body-bytes", "10"), _stub_process(default_port)
    try:
        head = f"PUT {ENGAGEMENT} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n"
        over_flag = _raw_answer(port, head % 11)
        at_default = _raw_answer(default_port, head % (32 << 20), b"{")  # under: routed
        over_default = _raw_answer(default_port, head % ((32 << 20) + 1))
    finally:
        for proc in (capped, default):
            proc.terminate()
            proc.wait(timeout=10)
    assert over_flag.status_code == 413
    assert at_default.status_code != 413
    assert over_default.status_code == 413


def test_an_injected_reset_logs_one_line_and_no_traceback(
    live_server: Callable[[FastAPI], LiveServer],
    captured_logs: list[dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Found by an audit (h45): each reset fault logged "Exception in ASGI application"
    with a traceback at error level, on the stderr ``gateway demo``'s stubs share; an
    injected fault is expected, not an error."""
    server = live_server(create_stub_app("engagements", faults=FaultConfig(reset=True)))
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + ENGAGEMENT, timeout=5)  # uvicorn logs before it closes
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    [line] = [entry for entry in captured_logs if entry.get("fault")]
    assert line == {
        "event": "fault_injected",
        "fault": "reset",
        "service": "engagements",
        "method": "GET",
        "path": ENGAGEMENT,
        "log_level": "info",
    }


class _Embedded(LiveServer):
    """A stub served from ``stub_config`` (or ``stub_server``), as a team embeds one in
    its own test process."""

    def __init__(self, app: FastAPI, build: Callable[..., uvicorn.Server] | None = None) -> None:
        super().__init__(app)
        if build is None:
            self.server = uvicorn.Server(stub_config(app, port=self.port))
        else:
            self.server = build(app, port=self.port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)


@pytest.mark.parametrize("embedding", ["live_server fixture", "stub_config"])
def test_an_in_process_stub_stops_promptly_with_a_hung_request(
    live_server: Callable[[FastAPI], LiveServer], embedding: str
) -> None:
    """Found by an audit (h45): only ``gateway stub`` cut requests off 2 s into a
    shutdown; a stub served in the test's own process (the suite's ``LiveServer``, or
    any embedded ``uvicorn.Server``) waited out every hang (``hang_max_seconds``)."""
    app = create_stub_app("engagements", faults=FaultConfig(hang=True, hang_max_seconds=25))
    server = _Embedded(app).start() if embedding == "stub_config" else live_server(app)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            hung = pool.submit(httpx.get, server.url + ENGAGEMENT, timeout=40)
            while not httpx.get(server.url + "/_stats", timeout=5).json()["faulted"]:
                time.sleep(0.05)
            started = time.monotonic()
            server.stop()
            took = time.monotonic() - started
            with pytest.raises(httpx.TransportError):
                hung.result(timeout=30)  # cut off unanswered
    finally:
        server.stop()
    assert took < 10, f"stopping took {took:.1f} s"


def _held(url: str, stats: str) -> concurrent.futures.Future[httpx.Response]:
    """A request sent in the background, once the stub has it (counted in ``/_stats``)."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    held = pool.submit(httpx.get, url, timeout=40)
    pool.shutdown(wait=False)
    while not httpx.get(stats, timeout=5).json()["requests"]:
        time.sleep(0.02)
    return held


def test_sigterm_cuts_off_what_the_stub_holds_and_logs_no_error() -> None:
    """uvicorn cut a held request off at its graceful-shutdown timeout and logged "Cancel
    1 running task(s), timeout graceful shutdown exceeded" at error level: on every stop
    of a stub holding a hang or a long latency, the normal end of a fault test. The stub
    now ends what it holds when the stop begins, and logs one info line for it."""
    port = free_port()
    proc = _stub_process(port, "--latency-ms", "30000", stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        held = _held(base + ENGAGEMENT, base + "/_stats")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
        with pytest.raises(httpx.TransportError):
            held.result(timeout=20)  # cut off unanswered, as before
    finally:
        proc.kill()
        proc.wait(timeout=10)
    lines = [json.loads(line) for line in stderr.decode().splitlines() if line.startswith("{")]
    assert [line["event"] for line in lines if line["level"] not in ("info", "debug")] == []
    cut = [line for line in lines if line["event"] == "request_cut_off"]
    assert [(c["service"], c["path"], c["reason"]) for c in cut] == [
        ("engagements", ENGAGEMENT, "stopping")
    ]


@pytest.mark.parametrize("embedding", ["live_server fixture", "stub_server"])
@pytest.mark.parametrize(
    ("faults", "outcome"),
    [
        ({"hang": True}, "cut off"),
        ({"latency_ms": 30_000}, "cut off"),
        ({"latency_ms": 1_500}, "served"),  # ends within the grace: answered in full
        ({"slow_body_ms": 2_000, "slow_chunk_bytes": 64}, "served"),  # the rest at once
    ],
    ids=["hang", "long latency", "short latency", "slow body"],
)
def test_an_in_process_stub_stops_without_uvicorns_error_line(
    live_server: Callable[[FastAPI], LiveServer],
    caplog: pytest.LogCaptureFixture,
    embedding: str,
    faults: dict[str, Any],
    outcome: str,
) -> None:
    app = create_stub_app("engagements", faults=FaultConfig.model_validate(faults))
    server = _Embedded(app, stub_server).start() if embedding == "stub_server" else live_server(app)
    try:
        held = _held(server.url + ENGAGEMENT, server.url + "/_stats")
        if outcome == "served":
            time.sleep(0.8)  # the stop begins under 1 s before the latency would end
        server.stop()
        if outcome == "served":
            assert held.result(timeout=20).status_code == 200
        else:
            with pytest.raises(httpx.TransportError):
                held.result(timeout=20)
    finally:
        server.stop()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.mark.parametrize(
    "body",
    [
        {"hang": "yes"},
        {"reset": 1},
        {"error_rate": True},
        {"error_rate": "0.5"},
        {"latency_ms": "100"},
        {"fail_next": 1.0},
        {"retry_after": "5"},
        {"seed": "7"},
    ],
)
def test_a_fault_value_of_the_wrong_type_is_refused_not_coerced(
    live_server: Callable[[FastAPI], LiveServer], body: dict[str, object]
) -> None:
    """Found by an audit (h45): pydantic's lax mode took ``"hang": "yes"`` as true,
    ``"error_rate": true`` as 1.0 and ``"latency_ms": "100"`` as 100: a typo or a
    string-typed config file set a fault nobody meant."""
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        answers = [client.post("/_faults", json=body), client.patch("/_faults", json=body)]
        faults = client.get("/_faults").json()
    [field] = body
    for answer in answers:
        assert (answer.status_code, answer.headers["content-type"]) == (422, PROBLEM)
        assert [error["loc"] for error in answer.json()["errors"]] == [["body", field]]
    assert faults == FaultConfig(seed=7).model_dump()


def test_fault_values_as_the_docs_show_them_are_taken(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Strict, but a whole number still does for a fraction or a bound in seconds."""
    server = live_server(create_stub_app("engagements"))
    body = {"error_rate": 1, "hang_max_seconds": 5, "retry_after": None, "hang": False}
    answer = httpx.post(server.url + "/_faults", json={**body, "latency_ms": 1, "seed": 3})
    assert answer.status_code == 200, answer.text
    assert (answer.json()["error_rate"], answer.json()["hang_max_seconds"]) == (1.0, 5.0)


def test_a_fault_scoped_to_methods_fails_a_post_and_serves_a_get(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Asked by integration-testing teams (h45, a gap): "fail only the POST", to see a
    write retried or not while the reads around it go through."""
    server = live_server(create_stub_app("findings"))
    create = f"{ENGAGEMENT}/findings"
    with httpx.Client(base_url=server.url, timeout=5) as client:
        scoped = client.post("/_faults", json={"fail_next": 2, "methods": ["POST"]})
        answers = [
            client.get(create).status_code,
            client.post(create, json={**FINDING, "title": "t"}).status_code,
            client.get(create).status_code,  # takes no owed failure
            client.post(create, json={**FINDING, "title": "t"}).status_code,
            client.post(create, json={**FINDING, "title": "t"}).status_code,
        ]
        stats = client.get("/_stats").json()
    assert scoped.status_code == 200, scoped.text
    assert scoped.json()["methods"] == ["POST"]
    assert answers == [200, 503, 200, 503, 201]
    assert stats == {"requests": 5, "faulted": 2}


@pytest.mark.parametrize("methods", [[], ["get"], ["POST", "FETCH"], "POST", [1]])
def test_fault_methods_must_be_http_methods(
    live_server: Callable[[FastAPI], LiveServer], methods: object
) -> None:
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        refused = client.patch("/_faults", json={"fail_next": 1, "methods": methods})
        faults = client.get("/_faults").json()
    assert (refused.status_code, refused.headers["content-type"]) == (422, PROBLEM)
    assert refused.json()["errors"][0]["loc"][:2] == ["body", "methods"]
    assert (faults["fail_next"], faults["methods"]) == (0, None)
