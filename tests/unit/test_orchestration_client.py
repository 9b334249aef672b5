"""DownstreamClient over httpx.MockTransport: retries, signing and start-up checks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.requests import ClientDisconnect
from structlog.testing import capture_logs

from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import message_from_httpx
from app.authn.verifier import SignatureVerifier
from app.core.config import ServiceSettings
from app.core.errors import ConfigError, DownstreamError
from app.domain.identity import Identity
from app.downstream.client import STALE_RESENDS, DownstreamClient, load_outbound_keys
from app.downstream.http1 import StaleConnection
from app.downstream.propagation import CallContext, bind_call_context
from app.downstream.transport import HEAD_RECEIVED
from app.main import create_app
from tests.conftest import make_settings

KEY = SigningKey("gateway-findings", b"gateway-outbound-test-secret-0123456789abcdef")
SETTINGS = ServiceSettings.model_validate(
    {"url": "http://findings.internal", "retry": {"backoff_initial_seconds": 0.001}}
)


def scripted(*statuses: int) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    answers = list(statuses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(answers.pop(0) if answers else 200, json={"ok": True})

    return httpx.MockTransport(handler), seen


def call(transport: httpx.MockTransport, **kwargs: Any) -> httpx.Response:
    async def scenario() -> httpx.Response:
        bind_call_context(CallContext(Identity("bob", (), "proxy"), "acme-2026"))
        client = DownstreamClient("findings", SETTINGS, transport, KEY)
        try:
            return await client.call(**kwargs)
        finally:
            await client.aclose()

    return asyncio.run(scenario())


def test_keyed_post_is_retried_and_every_attempt_is_signed_afresh() -> None:
    transport, seen = scripted(503, 200)
    response = call(
        transport, method="POST", path="/x", json={"a": 1}, idempotency_key="close-0001:freeze"
    )
    assert response.status_code == 200
    assert len(seen) == 2
    assert seen[0].headers["signature"] != seen[1].headers["signature"], "new nonce per attempt"
    verifier = SignatureVerifier(KeyRing([KEY]))
    for request in seen:
        assert request.headers["idempotency-key"] == "close-0001:freeze"
        identity = verifier.verify(message_from_httpx(request), request.content)
        assert (identity.subject, identity.key_id) == ("bob", KEY.id)


def dropping(*, head_received: bool) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    """The first attempt's connection closes (before or after the answer began), then 200."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) == 1:
            if head_received:
                request.extensions[HEAD_RECEIVED] = True
            raise httpx.RemoteProtocolError("closed", request=request)
        return httpx.Response(200, json={"ok": True})

    return httpx.MockTransport(handler), seen


@pytest.mark.parametrize(
    ("method", "key", "head_received", "attempts"),
    [
        ("GET", None, False, 2),  # closed before answering: retried
        ("POST", "close-0001:freeze", False, 2),  # a keyed POST may be repeated
        ("POST", None, False, 1),  # an unkeyed POST never
        ("GET", None, True, 1),  # the answer had begun: not repeated
    ],
)
def test_a_connection_closed_before_answering_is_retried_when_the_request_may_be(
    method: str, key: str | None, head_received: bool, attempts: int
) -> None:
    transport, seen = dropping(head_received=head_received)
    if attempts == 2:
        assert call(transport, method=method, path="/x", idempotency_key=key).status_code == 200
    else:
        with pytest.raises(DownstreamError) as caught:
            call(transport, method=method, path="/x", idempotency_key=key)
        assert caught.value.status_code == 502
    assert len(seen) == attempts


def test_unkeyed_post_is_sent_once() -> None:
    transport, seen = scripted(503, 200)
    with pytest.raises(DownstreamError):
        call(transport, method="POST", path="/x", json={"a": 1})
    assert len(seen) == 1


def test_a_failed_attempt_logs_the_status_the_service_answered() -> None:
    """A 503 (retried) and a 500 (not) were both a bare ``bad_gateway`` line: a tester
    injecting one or the other could not tell from the gateway's log what it got."""
    transport, _ = scripted(503, 500)
    with capture_logs() as logs, pytest.raises(DownstreamError):
        call(transport, method="GET", path="/x")
    lines = [e for e in logs if e["event"] == "downstream_call"]
    assert [(e["attempt"], e["outcome"], e.get("status")) for e in lines] == [
        (1, "bad_gateway", 503),
        (2, "bad_gateway", 500),
    ]


def test_an_attempt_with_no_answer_logs_no_status() -> None:
    transport, _ = dropping(head_received=False)
    with capture_logs() as logs:
        call(transport, method="GET", path="/x")
    first = next(e for e in logs if e["event"] == "downstream_call")
    assert first["outcome"] == "bad_gateway"
    assert "status" not in first


def test_a_missing_outbound_secret_stops_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_GATEWAY_KEY", raising=False)
    service = ServiceSettings.model_validate(
        {"url": "http://x", "signing_key": {"id": "g", "secret_env": "NO_SUCH_GATEWAY_KEY"}}
    )
    with pytest.raises(ConfigError, match=r"services\.findings\.signing_key"):
        load_outbound_keys({"findings": service})


def test_a_pass_through_to_an_unknown_service_stops_start_up(test_key_env: str) -> None:
    route = {"path": "/v1/things/{id}", "service": "ghost", "upstream_path": "/t/{id}"}
    settings = make_settings({"findings": "http://x"}, orchestration={"passthrough": [route]})
    with pytest.raises(ConfigError, match=r"orchestration\.passthrough\[0\].*ghost"):
        create_app(settings)


def test_the_breaker_counts_requests_not_attempts() -> None:
    """fail_max=2 with three attempts a request: two failed requests open it, not one."""
    settings = SETTINGS.model_copy(
        update={"breaker": SETTINGS.breaker.model_copy(update={"fail_max": 2})}
    )
    transport, seen = scripted(*[503] * 9)

    async def scenario() -> list[str]:
        bind_call_context(CallContext(Identity("bob", (), "proxy"), "acme-2026"))
        client = DownstreamClient("findings", settings, transport, KEY)
        outcomes = []
        try:
            for _ in range(3):
                with pytest.raises(DownstreamError) as raised:
                    await client.call("GET", "/x")
                outcomes.append(f"{raised.value.code}:{client.breaker.snapshot().failures}")
        finally:
            await client.aclose()
        return outcomes

    outcomes = asyncio.run(scenario())
    assert outcomes == ["bad_gateway:1", "bad_gateway:2", "circuit_open:2"]
    assert len(seen) == 6, "three attempts for each of the two requests, none for the third"


def test_a_retry_meets_a_breaker_opened_meanwhile_and_fails_fast() -> None:
    seen: list[httpx.Request] = []

    async def scenario() -> tuple[str, int]:
        bind_call_context(CallContext(Identity("bob", (), "proxy"), "acme-2026"))

        def handler(request: httpx.Request) -> httpx.Response:
            seen.append(request)
            client.breaker._breaker.open()  # another request's failure opened it meanwhile
            return httpx.Response(503)

        client = DownstreamClient("findings", SETTINGS, httpx.MockTransport(handler), KEY)
        try:
            with pytest.raises(DownstreamError) as raised:
                await client.call("GET", "/x")
        finally:
            await client.aclose()
        return raised.value.code, client.breaker.snapshot().failures

    code, failures = asyncio.run(scenario())
    assert (code, failures, len(seen)) == ("circuit_open", 0, 1)


def test_a_send_stale_every_time_is_a_retryable_502_never_an_unmapped_error() -> None:
    """Each stale send is re-sent at once, re-signed; one still stale after the last
    resend is a connection lost before any answer (retried, then 502), not a 500."""
    sent: list[httpx.Request] = []

    def stale(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        raise StaleConnection("closed while idle", request=request)

    with pytest.raises(DownstreamError) as raised:
        call(httpx.MockTransport(stale), method="GET", path="/x")
    assert raised.value.code == "bad_gateway"
    attempts = SETTINGS.retry.attempts
    assert len(sent) == attempts * (STALE_RESENDS + 1)
    assert len({r.headers["signature"] for r in sent}) == len(sent), "each send re-signed"


def test_an_upload_its_caller_cut_short_is_no_breaker_success() -> None:
    """A client that leaves mid-upload (``ClientDisconnect`` raised by the body as it
    streams) judged the service neither way: it reset the failure count, and a
    half-open breaker's trial cut so closed it although the service answered nothing."""
    settings = SETTINGS.model_copy(
        update={
            "retry": SETTINGS.retry.model_copy(update={"attempts": 1}),
            "breaker": SETTINGS.breaker.model_copy(
                update={"fail_max": 2, "reset_timeout_seconds": 0.05}
            ),
        }
    )

    async def handler(request: httpx.Request) -> httpx.Response:
        async for _ in request.stream:  # type: ignore[union-attr]
            pass
        return httpx.Response(503)

    async def cut_upload() -> AsyncIterator[bytes]:
        yield b"first chunk"
        raise ClientDisconnect()

    async def scenario() -> tuple[int, str]:
        bind_call_context(CallContext(Identity("bob", (), "proxy"), "acme-2026"))
        client = DownstreamClient("findings", settings, httpx.MockTransport(handler), KEY)

        async def upload() -> None:
            with pytest.raises(ClientDisconnect):
                await client.call("POST", "/evidence", content=cut_upload(), stream=True)

        try:
            with pytest.raises(DownstreamError):
                await client.call("GET", "/x")
            await upload()
            failures = client.breaker.snapshot().failures
            with pytest.raises(DownstreamError):
                await client.call("GET", "/x")  # the second failure opens it
            await asyncio.sleep(0.1)  # half-open: the next call is its trial
            await upload()
            return failures, client.breaker.snapshot().state
        finally:
            await client.aclose()

    failures, state = asyncio.run(scenario())
    assert failures == 1, "the cut upload reset the failure count"
    assert state == "half-open", "the cut upload's trial closed the breaker"
