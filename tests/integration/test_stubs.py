"""Stub services as users meet them: real servers, real faults, signature checks."""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI

from app.authn.keys import KeyRing, SigningKey
from app.domain.identity import Identity
from app.downstream.propagation import CallContext, propagation_headers, sign_outbound
from app.stubs.faults import FaultConfig
from app.stubs.server import create_stub_app
from tests.conftest import LiveServer

pytestmark = pytest.mark.integration

KEY = SigningKey("gateway-engagements", b"gateway-outbound-test-secret-0123456789abcdef")
ENGAGEMENT = "/engagements/acme-2026"


def signed(url: str, subject: str = "alice") -> httpx.Request:
    context = CallContext(Identity(subject, (), "proxy"), "acme-2026")
    request = httpx.Request("GET", url, headers=propagation_headers(context))
    sign_outbound(request, KEY)
    return request


def test_faults_are_set_shown_and_cleared_over_http(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url) as client:
        assert client.post("/_faults", json={"fail_next": 2, "retry_after": 3}).status_code == 200
        assert client.get("/_faults").json()["fail_next"] == 2
        failed = [client.get(ENGAGEMENT) for _ in range(2)]
        assert client.get(ENGAGEMENT).status_code == 200
        assert client.post("/_faults", json={"error_rate": 2}).status_code == 422
        assert client.delete("/_faults").json()["fail_next"] == 0
        stats = client.get("/_stats").json()
    assert [r.status_code for r in failed] == [503, 503]
    assert failed[0].headers["retry-after"] == "3"
    assert stats == {"requests": 3, "faulted": 2}


def test_get_faults_shows_the_failures_still_owed(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """``GET /_faults`` posted back as it is changes nothing: it re-armed spent failures."""
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url) as client:
        client.post("/_faults", json={"fail_next": 3, "fail_status": 502}).raise_for_status()
        assert client.get(ENGAGEMENT).status_code == 502
        shown = client.get("/_faults").json()
        assert (shown["fail_next"], shown["fail_status"]) == (2, 502)
        client.post("/_faults", json=shown).raise_for_status()  # a test saving and restoring
        after = [client.get(ENGAGEMENT).status_code for _ in range(3)]
        merged = client.patch("/_faults", json={"latency_ms": 0}).json()
    assert after == [502, 502, 200]
    assert merged["fail_next"] == 0  # PATCH answers what is in force too


def test_same_seed_same_failures(live_server: Callable[[FastAPI], LiveServer]) -> None:
    faults = FaultConfig(error_rate=0.5, seed=42)
    runs = []
    for _ in range(2):
        server = live_server(create_stub_app("engagements", faults=faults))
        with httpx.Client(base_url=server.url) as client:
            runs.append([client.get(ENGAGEMENT).status_code for _ in range(12)])
    assert runs[0] == runs[1]
    assert {200, 500} == set(runs[0])


def test_reset_drops_the_connection(live_server: Callable[[FastAPI], LiveServer]) -> None:
    server = live_server(create_stub_app("engagements", faults=FaultConfig(reset=True)))
    with pytest.raises(httpx.TransportError):
        httpx.get(server.url + ENGAGEMENT)
    assert httpx.get(server.url + "/_health").status_code == 200, "control paths never fault"


def test_slow_body_still_delivers_the_whole_body(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    faults = FaultConfig(slow_body_ms=1, slow_chunk_bytes=16)
    server = live_server(create_stub_app("engagements", faults=faults))
    with httpx.stream("GET", server.url + ENGAGEMENT) as response:
        chunks = list(response.iter_raw())
    assert len(chunks) > 1
    assert httpx.Response(200, content=b"".join(chunks)).json()["id"] == "acme-2026"


def test_hang_is_released_by_clearing_faults(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    server = live_server(create_stub_app("engagements", faults=FaultConfig(hang=True)))
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(server.url + ENGAGEMENT, timeout=0.3)
    httpx.delete(server.url + "/_faults")
    assert httpx.get(server.url + ENGAGEMENT, timeout=5).status_code == 200


def test_the_stub_verifies_the_gateway_signature(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    app = create_stub_app("engagements", keyring=KeyRing([KEY]), require_signature=True)
    server = live_server(app)
    with httpx.Client() as client:
        good = client.send(signed(server.url + ENGAGEMENT, "bob"))
        tampered = signed(server.url + ENGAGEMENT, "bob")
        tampered.headers["x-auth-subject"] = "dana"
        bad = client.send(tampered)
        unsigned = client.get(server.url + ENGAGEMENT)
        seen = client.get(server.url + "/_seen").json()
    assert good.status_code == 200
    assert (bad.status_code, unsigned.status_code) == (401, 401)
    assert [(s["signature"], s.get("subject")) for s in seen] == [
        ("valid", "bob"),
        ("signature_invalid", None),
        ("absent", None),
    ]


def test_close_and_reopen_round_trip(live_server: Callable[[FastAPI], LiveServer]) -> None:
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url) as client:
        key = {"idempotency-key": "step-0001"}
        closed = client.post(f"{ENGAGEMENT}/close", headers=key)
        replayed = client.post(f"{ENGAGEMENT}/close", headers=key)
        conflict = client.post(f"{ENGAGEMENT}/close")
        reopened = client.post(f"{ENGAGEMENT}/reopen")
    assert closed.json()["status"] == "closed"
    assert replayed.json() == closed.json()
    assert conflict.status_code == 409
    assert reopened.json()["status"] == "active"


def test_patch_merges_faults_and_post_replaces_them_keeping_the_stub_seed(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    server = live_server(create_stub_app("engagements", seed=7))
    with httpx.Client(base_url=server.url) as client:
        assert client.get("/_faults").json()["seed"] == 7
        client.post("/_faults", json={"fail_next": 2, "retry_after": 3})
        assert client.get(ENGAGEMENT).status_code == 503  # one of the two spent
        merged = client.patch("/_faults", json={"latency_ms": 5}).json()
        still_failing = client.get(ENGAGEMENT).status_code
        replaced = client.post("/_faults", json={"latency_ms": 1}).json()
        invalid = client.patch("/_faults", json={"error_rate": 2})
        cleared = client.delete("/_faults").json()
    # fail_next: what is still owed (one of the two was spent), as GET shows it
    assert (merged["fail_next"], merged["retry_after"], merged["latency_ms"]) == (1, 3, 5)
    assert merged["seed"] == 7
    assert still_failing == 503, "a merge keeps the failures still owed"
    assert (replaced["fail_next"], replaced["retry_after"], replaced["seed"]) == (0, None, 7)
    assert invalid.status_code == 422
    assert cleared == FaultConfig(seed=7).model_dump()


def test_seen_records_faulted_requests_too(live_server: Callable[[FastAPI], LiveServer]) -> None:
    app = create_stub_app("engagements", keyring=KeyRing([KEY]))
    server = live_server(app)
    with httpx.Client() as client:
        client.post(server.url + "/_faults", json={"fail_next": 1, "fail_status": 502})
        failed = client.send(signed(server.url + ENGAGEMENT, "bob"))
        served = client.send(signed(server.url + ENGAGEMENT, "bob"))
        client.post(server.url + "/_faults", json={"reset": True})
        with pytest.raises(httpx.TransportError):
            client.send(signed(server.url + ENGAGEMENT, "carol"))
        seen = client.get(server.url + "/_seen").json()
    assert (failed.status_code, served.status_code) == (502, 200)
    assert [(s["fault"], s["signature"], s.get("subject"), s["path"]) for s in seen] == [
        ("status 502", "valid", "bob", ENGAGEMENT),
        (None, "valid", "bob", ENGAGEMENT),
        ("reset", "valid", "carol", ENGAGEMENT),
    ]
    assert seen[0]["headers"]["x-auth-subject"] == "bob"


@pytest.mark.parametrize("release", ["timeout", "delete"])
def test_a_hanging_request_is_answered_once_released(
    live_server: Callable[[FastAPI], LiveServer], release: str
) -> None:
    """Found by an audit: a released request never got its answer (the fault had read its
    body, and its route waited for the body again). Released by ``hang_max_seconds`` or
    by clearing the faults, it is served by its route, body and all."""
    bound = 0.5 if release == "timeout" else 60
    faults = FaultConfig(hang=True, hang_max_seconds=bound)
    server = live_server(create_stub_app("findings", faults=faults))
    finding = {"title": "released", "severity": "low", "created_by": "alice"}
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            httpx.post, f"{server.url}{ENGAGEMENT}/findings", json=finding, timeout=30
        )
        if release == "delete":
            with httpx.Client(base_url=server.url) as control:
                for _ in range(500):  # until the request is hanging (recorded), then release
                    if control.get("/_stats").json()["faulted"]:
                        break
                    threading.Event().wait(0.01)
                control.delete("/_faults")
        answer = pending.result(timeout=30)
    assert answer.status_code == 201, answer.text
    assert answer.json()["title"] == "released"
    seen = httpx.get(server.url + "/_seen").json()
    assert [entry["fault"] for entry in seen] == ["hang", None]


def test_a_fault_may_answer_4xx_as_a_service_would(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """What a service's 404 or 409 means to the caller is testable with faults."""
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url) as client:
        set_ = client.post("/_faults", json={"fail_next": 2, "fail_status": 404})
        assert set_.status_code == 200
        assert [client.get(ENGAGEMENT).status_code for _ in range(3)] == [404, 404, 200]
        assert client.post("/_faults", json={"error_status": 399}).status_code == 422


def _until(ready: Callable[[], bool], within: float = 5.0) -> bool:
    """Poll ``ready`` until it holds or ``within`` seconds pass; whether it held."""
    deadline = time.monotonic() + within
    while not ready():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)
    return True


def _abandoned(request: httpx.Request) -> None:
    """Send ``request`` and give up on it after 0.1 s, closing the connection, as a
    gateway does at its deadline."""
    request.extensions["timeout"] = httpx.Timeout(0.1).as_dict()
    with httpx.Client() as client, pytest.raises(httpx.ReadTimeout):
        client.send(request)


def test_a_failure_set_after_a_request_arrived_is_not_that_request_s(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Found by an audit (h32, finding 4): after a caller gave up on a slow stub, a
    ``fail_next: 1`` set next was taken by the abandoned request when its latency ran
    out, so the next real request got 200, and the abandoned one was counted as faulted
    but never listed (reading its body raised ``ClientDisconnect``). Faults are decided
    on arrival: the failure is the next request's; the abandoned one is listed, gone."""
    server = live_server(create_stub_app("engagements"))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.post("/_faults", json={"latency_ms": 400})
        _abandoned(httpx.Request("GET", server.url + ENGAGEMENT))
        client.patch("/_faults", json={"latency_ms": 0, "fail_next": 1, "fail_status": 500})
        # Until the abandoned request is past its latency (listed, or counted as faulted).
        _until(lambda: bool(client.get("/_seen").json() or client.get("/_stats").json()["faulted"]))
        next_one = client.get(ENGAGEMENT)
        seen = client.get("/_seen").json()
        stats = client.get("/_stats").json()
    assert next_one.status_code == 500, "fail_next fails the next request to arrive"
    assert [(s["fault"], s.get("client_gone")) for s in seen] == [
        (None, True),
        ("status 500", False),
    ]
    assert stats == {"requests": 2, "faulted": 1}


def test_an_abandoned_request_that_owed_a_failure_is_listed_with_it(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """The failure owed on arrival stays that request's, its client gone or not, and
    it is listed (its signature checked: it had no body) and counted once."""
    server = live_server(create_stub_app("engagements", keyring=KeyRing([KEY])))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        client.post("/_faults", json={"latency_ms": 300, "fail_next": 1, "fail_status": 502})
        _abandoned(signed(server.url + ENGAGEMENT, "bob"))
        _until(lambda: bool(client.get("/_seen").json()))
        served = client.send(signed(server.url + ENGAGEMENT, "carol"))
        seen = client.get("/_seen").json()
        stats = client.get("/_stats").json()
    assert served.status_code == 200, "the one failure was the abandoned request's"
    summary = [(s["fault"], s.get("client_gone"), s["signature"], s.get("subject")) for s in seen]
    assert summary == [("status 502", True, "valid", "bob"), (None, False, "valid", "carol")]
    assert stats == {"requests": 2, "faulted": 1}


def test_a_hanging_request_released_by_setting_a_failure_is_served(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """The change that releases a hang sets ``fail_next``: the failure is the next
    request's, not the one that was hanging (it arrived before the change)."""
    server = live_server(create_stub_app("engagements", faults=FaultConfig(hang=True)))
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        pending = pool.submit(httpx.get, server.url + ENGAGEMENT, timeout=10)
        assert _until(lambda: client.get("/_stats").json()["faulted"] == 1), "not hanging"
        client.patch("/_faults", json={"hang": False, "fail_next": 1, "fail_status": 503})
        released = pending.result(timeout=10)
        next_one = client.get(ENGAGEMENT)
        seen = client.get("/_seen").json()
    assert (released.status_code, next_one.status_code) == (200, 503)
    assert [s["fault"] for s in seen] == ["hang", None, "status 503"]


def test_a_hanging_request_whose_client_left_is_listed_not_served_when_released(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """Released after its caller gave up, a hung create is listed as gone and creates
    nothing: its route has no one to answer (it used to act on the replayed body)."""
    server = live_server(create_stub_app("findings", faults=FaultConfig(hang=True)))
    finding = {"title": "abandoned", "severity": "low", "created_by": "alice"}
    _abandoned(httpx.Request("POST", f"{server.url}{ENGAGEMENT}/findings", json=finding))
    with httpx.Client(base_url=server.url, timeout=5) as client:
        assert _until(lambda: client.get("/_stats").json()["faulted"] == 1), "not hanging"
        client.delete("/_faults")
        _until(lambda: len(client.get("/_seen").json()) == 2)
        seen = client.get("/_seen").json()
        titles = [f["title"] for f in client.get(f"{ENGAGEMENT}/findings").json()["items"]]
    assert "abandoned" not in titles
    assert [(s["fault"], s.get("client_gone")) for s in seen[:2]] == [("hang", False), (None, True)]


def test_an_upload_cut_short_is_listed_as_gone(
    live_server: Callable[[FastAPI], LiveServer], caplog: pytest.LogCaptureFixture
) -> None:
    """A request whose client leaves mid-body is listed too (never stored); its
    signature cannot be checked without its body; no traceback is logged for it."""
    server = live_server(create_stub_app("findings", keyring=KeyRing([KEY])))
    head = (
        f"POST {ENGAGEMENT}/evidence HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "Content-Length: 1000\r\nSignature: sig1=:AAAA:\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(head.encode() + b"x" * 10)
        assert _until(lambda: bool(httpx.get(server.url + "/_stats").json()["requests"]))
    assert _until(lambda: bool(httpx.get(server.url + "/_seen").json()))
    [entry] = httpx.get(server.url + "/_seen").json()
    assert (entry["path"], entry["fault"], entry.get("client_gone")) == (
        f"{ENGAGEMENT}/evidence",
        None,
        True,
    )
    assert entry["signature"] == "body_incomplete"
    assert httpx.get(server.url + "/_stats").json() == {"requests": 1, "faulted": 0}
    assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text


def test_a_hanging_request_that_owed_a_failure_keeps_it_when_the_faults_are_cleared(
    live_server: Callable[[FastAPI], LiveServer],
) -> None:
    """The failure it took on arrival is its own: clearing the faults releases it, and
    it fails; the failure is not owed again."""
    faults = FaultConfig(hang=True, fail_next=1, fail_status=503)
    server = live_server(create_stub_app("engagements", faults=faults))
    with (
        concurrent.futures.ThreadPoolExecutor(1) as pool,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        pending = pool.submit(httpx.get, server.url + ENGAGEMENT, timeout=10)
        assert _until(lambda: client.get("/_stats").json()["faulted"] == 1), "not hanging"
        client.delete("/_faults")
        released = pending.result(timeout=10)
        next_one = client.get(ENGAGEMENT)
        seen = client.get("/_seen").json()
    assert (released.status_code, next_one.status_code) == (503, 200)
    assert [s["fault"] for s in seen] == ["hang", "status 503", None]
