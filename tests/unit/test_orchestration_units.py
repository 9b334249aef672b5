"""Propagation, idempotency, sagas, streaming digests and configuration, without a network."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request
from structlog.testing import capture_logs

from app.authn.base import Message
from app.authn.digest import content_digest
from app.authn.keys import KeyRing, SigningKey
from app.authn.signer import message_from_httpx
from app.authn.verifier import SignatureVerifier
from app.authz.closed import ClosedFact, MemoryEngagementState
from app.core.config import PassthroughRoute, ServiceSettings, Settings
from app.core.errors import (
    AuthenticationFailed,
    BadRequest,
    Conflict,
    DownstreamError,
    DownstreamTimeout,
    IdempotencyKeyReused,
    InvalidPath,
    PayloadTooLarge,
)
from app.core.headers import DEFAULT_FORWARDED, never_forwarded
from app.domain.engagements import CloseRequest
from app.domain.identity import Identity
from app.downstream.client import ServiceRegistry
from app.downstream.propagation import (
    CallContext,
    bind_call_context,
    forwardable_headers,
    forwarded_header,
    propagation_headers,
    sign_outbound,
)
from app.downstream.resilience import PoolExhausted, RetryableError, RetryableTimeout
from app.edge.paths import normalize_path
from app.workflows.closing import CloseService
from app.workflows.engagement_lock import MemoryEngagementLocks
from app.workflows.idempotency import (
    Codec,
    IdempotencyStoreUnavailable,
    MemoryIdempotencyStore,
    require_key,
)
from app.workflows.passthrough import CheckedBody, StreamingDigest, query_of, upstream_path
from app.workflows.saga import Saga, Step, finish_undos

KEY = SigningKey("gateway-findings", b"gateway-outbound-test-secret-0123456789abcdef")


def test_forwardable_headers_strip_hop_by_hop_identity_and_signature() -> None:
    kept = forwardable_headers(
        [
            ("Accept", "application/pdf"),
            ("Connection", "keep-alive, X-Secret-Hop"),
            ("X-Secret-Hop", "1"),
            ("Transfer-Encoding", "chunked"),
            ("X-Auth-Subject", "mallory"),
            ("X-Auth-Groups", "admins"),
            ("X-Gateway-Engagement", "other"),
            ("Signature", "sig1=:abc:"),
            ("Signature-Input", "sig1=()"),
            ("Host", "gateway"),
            ("If-None-Match", '"R-1"'),
            ("X-Unlisted", "not on the allow-list"),
        ],
        DEFAULT_FORWARDED | {"x-secret-hop"},
    )
    assert kept == [("accept", "application/pdf"), ("if-none-match", '"R-1"')]


# The headers of issue 12's report, each of which reached the service.
SMUGGLED = [
    ("X-HTTP-Method-Override", "DELETE"),
    ("X-Original-URL", "/admin/policy"),
    ("X-Rewrite-URL", "/admin/policy"),
    ("X-Forwarded-Prefix", "/admin"),
    ("X_Auth_Subject", "sam"),
    ("X-Forwarded-For", "10.0.0.1"),
    ("Forwarded", "for=10.0.0.1"),
    ("x_gateway_engagement", "acme-2026"),
    ("Signature_Input", "sig1=()"),
]


def test_smuggled_headers_never_pass_even_when_a_list_names_them() -> None:
    allowed = {name.lower() for name, _ in SMUGGLED}
    assert forwardable_headers([*SMUGGLED, ("Accept", "*/*")], allowed | {"accept"}) == [
        ("accept", "*/*")
    ]


@given(st.from_regex(r"[A-Za-z0-9_-]{1,24}", fullmatch=True))
def test_a_name_never_forwarded_in_one_spelling_is_refused_in_every_spelling(name: str) -> None:
    spellings = {name, name.lower(), name.upper(), name.replace("-", "_"), name.replace("_", "-")}
    verdicts = {never_forwarded(spelling) for spelling in spellings}
    assert len(verdicts) == 1
    if verdicts == {True}:
        assert forwardable_headers([(s, "v") for s in spellings], {*spellings}) == []


@pytest.mark.parametrize(
    "name",
    [
        "X_Auth_Subject",
        "x-auth-whatever",
        "X-HTTP-Method-Override",
        "x-original-url",
        "X-Rewrite-URL",
        "Forwarded",
        "x_forwarded_for",
        "X-Forwarded-Prefix",
        "signature",
        "Content-Digest",
        "x-gateway-engagement",
        "Connection",
        "host",
    ],
)
def test_a_route_cannot_add_a_never_forwarded_header(name: str) -> None:
    with pytest.raises(ValueError, match="never forwarded"):
        PassthroughRoute(path="/v1/x", service="s", upstream_path="/x", forward_headers=(name,))


def test_a_route_adds_headers_to_the_default_allow_list_in_lower_case() -> None:
    route = PassthroughRoute(
        path="/v1/x", service="s", upstream_path="/x", forward_headers=("X-Client-Ref",)
    )
    assert route.forward_headers == ("x-client-ref",)
    with pytest.raises(ValueError, match="not a header field name"):
        PassthroughRoute(path="/v1/x", service="s", upstream_path="/x", forward_headers=("a b",))


def test_the_gateway_states_the_hop_itself() -> None:
    assert forwarded_header("127.0.0.1", "http") == ("forwarded", "for=127.0.0.1;proto=http")
    assert forwarded_header("::1", "https") == ("forwarded", 'for="[::1]";proto=https')
    assert forwarded_header(None, "http") == ("forwarded", "for=unknown;proto=http")


def test_propagation_headers_carry_the_bound_caller() -> None:
    context = CallContext(Identity("alice", ("pentesters",), "proxy"), "acme-2026", None)
    headers = propagation_headers(context)
    assert headers["x-auth-subject"] == "alice"
    assert headers["x-auth-groups"] == "pentesters"
    assert headers["x-gateway-engagement"] == "acme-2026"
    assert "traceparent" in headers
    assert "x-auth-subject" not in propagation_headers(None)


def test_propagation_continues_the_callers_trace_and_state() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
    context = CallContext(Identity("alice", (), "proxy"), None, parent, "vendor=1")
    first, second = propagation_headers(context), propagation_headers(context)
    assert first["tracestate"] == "vendor=1"
    for headers in (first, second):
        _, trace_id, span_id, flags = headers["traceparent"].split("-")
        assert (trace_id, flags) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00")
        assert span_id != "00f067aa0ba902b7"
    assert first["traceparent"] != second["traceparent"], "a new span id per attempt"
    assert context.parent is context.parent, "parsed once per request"


def test_outbound_signature_verifies_with_the_inbound_verifier() -> None:
    body = b'{"kind":"final"}'
    context = CallContext(Identity("bob", (), "proxy"), "acme-2026")
    request = httpx.Request(
        "POST",
        "http://reports.internal/engagements/acme-2026/reports?draft=no",
        content=body,
        headers={**propagation_headers(context), "content-digest": content_digest(body)},
    )
    sign_outbound(request, KEY)
    verifier = SignatureVerifier(KeyRing([KEY]))
    identity = verifier.verify(message_from_httpx(request), body)
    assert (identity.subject, identity.key_id) == ("bob", "gateway-findings")
    assert "x-gateway-engagement" in request.headers["signature-input"]
    with pytest.raises(AuthenticationFailed):
        verifier.verify(message_from_httpx(request), b'{"kind":"interim"}')
    forged = Message("POST", "/engagements/acme-2026/reports", "draft=no", "http", "x", {})
    with pytest.raises(AuthenticationFailed):
        verifier.verify(forged, body)


TEXT = Codec(str.encode, bytes.decode)


def test_idempotency_store_replays_refuses_and_forgets_failures() -> None:
    async def scenario() -> None:
        store = MemoryIdempotencyStore(ttl_seconds=60)
        calls: list[str] = []

        async def operation() -> str:
            calls.append("run")
            return "first"

        assert await store.run(("k",), "fp", operation, TEXT) == ("first", False)
        assert await store.run(("k",), "fp", operation, TEXT) == ("first", True)
        with pytest.raises(IdempotencyKeyReused):
            await store.run(("k",), "other", operation, TEXT)

        async def broken() -> str:
            raise DownstreamError("s")

        with pytest.raises(DownstreamError):
            await store.run(("j",), "fp", broken, TEXT)
        assert await store.run(("j",), "fp", operation, TEXT) == ("first", False)
        assert calls == ["run", "run"]

    asyncio.run(scenario())


def test_idempotency_store_refuses_a_concurrent_duplicate_and_expires_keys() -> None:
    async def scenario() -> None:
        now = [0.0]
        store = MemoryIdempotencyStore(ttl_seconds=10, clock=lambda: now[0])
        gate = asyncio.Event()

        async def slow() -> str:
            await gate.wait()
            return "done"

        first = asyncio.create_task(store.run(("k",), "fp", slow, TEXT))
        await asyncio.sleep(0)
        with pytest.raises(Conflict) as running:
            await store.run(("k",), "fp", slow, TEXT)
        # When to come back (RFC 9110 section 10.2.3, delta-seconds): it had no Retry-After.
        assert running.value.status_code == 409
        assert running.value.headers == {"Retry-After": "1"}
        gate.set()
        assert await first == ("done", False)
        now[0] = 11.0
        assert await store.run(("k",), "fp", slow, TEXT) == ("done", False)

    asyncio.run(scenario())


def test_idempotency_store_in_memory_is_bounded_and_refuses_when_full() -> None:
    """An audit found no bound: every keyed write's result stayed for the TTL (24 h), so
    a caller sending new keys grew the process until it died. Full is a 503 that runs
    nothing (evicting a live key would let its retry run again); expired keys make room."""

    async def scenario() -> None:
        now = [0.0]
        store = MemoryIdempotencyStore(ttl_seconds=10, clock=lambda: now[0], capacity=2)
        calls: list[str] = []

        async def operation() -> str:
            calls.append("run")
            return "result"

        assert await store.run(("a",), "fp", operation, TEXT) == ("result", False)
        assert await store.run(("b",), "fp", operation, TEXT) == ("result", False)
        with pytest.raises(IdempotencyStoreUnavailable) as full:
            await store.run(("c",), "fp", operation, TEXT)
        assert (full.value.status_code, full.value.headers) == (503, {"Retry-After": "1"})
        assert await store.run(("a",), "fp", operation, TEXT) == ("result", True)  # replays
        assert (len(store), calls) == (2, ["run", "run"])
        now[0] = 11.0  # both expired: room again
        assert await store.run(("c",), "fp", operation, TEXT) == ("result", False)
        assert len(store) == 1

    asyncio.run(scenario())


@pytest.mark.parametrize("value", [None, "short", "has space!", "x" * 200])
def test_idempotency_keys_must_be_present_and_well_formed(value: str | None) -> None:
    with pytest.raises(BadRequest):
        require_key(value)


def test_saga_compensates_done_steps_in_reverse_and_names_the_failed_step() -> None:
    trail: list[str] = []

    def step(name: str, fails: bool = False) -> Step:
        async def action() -> str:
            trail.append(f"do {name}")
            if fails:
                raise DownstreamTimeout("svc-" + name)
            return name

        async def undo(result: Any) -> None:
            trail.append(f"undo {result}")

        return Step(name, "svc-" + name, action, undo)

    saga = Saga("demo", [step("a"), step("b"), step("c", fails=True), step("d")])
    with capture_logs() as logs, pytest.raises(DownstreamTimeout) as raised:
        asyncio.run(saga.run())
    assert trail == ["do a", "do b", "do c", "undo b", "undo a"]
    assert raised.value.service == "svc-c"
    assert "step c" in raised.value.detail
    assert "undone" in raised.value.detail
    statuses = [(line["step"], line["status"]) for line in logs if line["event"] == "saga_step"]
    assert statuses[-3:] == [("c", "failed"), ("b", "compensated"), ("a", "compensated")]


def test_saga_reports_a_compensation_that_failed() -> None:
    async def ok() -> str:
        return "x"

    async def broken_undo(_: Any) -> None:
        raise DownstreamError("svc")

    async def fails() -> str:
        raise DownstreamError("svc2")

    saga = Saga("demo", [Step("a", "svc", ok, broken_undo), Step("b", "svc2", fails)])
    with pytest.raises(DownstreamError) as raised:
        asyncio.run(saga.run())
    assert "could NOT undo a;" in raised.value.detail


@pytest.mark.parametrize("cancels", [1, 2])
def test_a_saga_cancelled_mid_step_undoes_its_steps_before_it_stops(cancels: int) -> None:
    """uvicorn cancels a request still running when the drain runs out: the done steps
    (and the one in flight, when its undo needs no answer) are undone first; a second
    cancellation stops the wait, not the undo, which finish_undos waits for."""
    trail: list[str] = []
    in_flight = asyncio.Event()
    undo_may_end = asyncio.Event()

    async def ok() -> str:
        trail.append("do a")
        return "a"

    async def hangs() -> str:
        trail.append("do b")
        in_flight.set()
        await asyncio.sleep(3600)
        return "b"

    async def undo(result: Any) -> None:
        await undo_may_end.wait()
        trail.append(f"undo {result}")

    async def scenario() -> None:
        steps = [
            Step("a", "svc", ok, undo),
            Step("b", "svc", hangs, undo, undo_when_unanswered=True),
            Step("c", "svc", ok, undo),
        ]
        task = asyncio.create_task(Saga("demo", steps).run())
        await in_flight.wait()
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.01)
        assert trail == ["do a", "do b"]  # the undo waits for undo_may_end
        undo_may_end.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await finish_undos(5)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert trail == ["do a", "do b", "undo None", "undo a"]
    statuses = [(line["step"], line["status"]) for line in logs if line["event"] == "saga_step"]
    assert ("b", "cancelled") in statuses
    assert statuses[-2:] == [("b", "compensated"), ("a", "compensated")]
    assert any(line["event"] == "saga_undo_detached" for line in logs) is (cancels == 2)


@pytest.mark.parametrize("cancels", [1, 2])
def test_a_saga_cancelled_while_it_undoes_a_failed_step_still_undoes_every_step(
    cancels: int,
) -> None:
    """Shutdown cancels a request whose saga is compensating a failure: the compensation
    goes on to the first step and the request ends (cancelled) after it; a second
    cancellation ends the request at once, not the undo, which finish_undos waits for."""
    trail: list[str] = []
    undoing = asyncio.Event()
    undo_may_end = asyncio.Event()

    def ok(name: str) -> Callable[[], Awaitable[str]]:
        async def action() -> str:
            trail.append(f"do {name}")
            return name

        return action

    async def fails() -> str:
        trail.append("do c")
        raise DownstreamTimeout("svc")

    async def slow_undo(result: Any) -> None:
        undoing.set()
        await undo_may_end.wait()
        trail.append(f"undo {result}")

    async def undo(result: Any) -> None:
        trail.append(f"undo {result}")

    async def scenario() -> None:
        steps = [Step("a", "svc", ok("a"), undo), Step("b", "svc", ok("b"), slow_undo)]
        task = asyncio.create_task(Saga("demo", [*steps, Step("c", "svc", fails)]).run())
        await undoing.wait()
        for _ in range(cancels):
            task.cancel()
            await asyncio.sleep(0.01)
        assert task.done() is (cancels == 2)  # once: the request waits for its undo
        assert trail == ["do a", "do b", "do c"]  # b's undo is still running
        undo_may_end.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await finish_undos(5)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert trail == ["do a", "do b", "do c", "undo b", "undo a"]
    statuses = [(line["step"], line["status"]) for line in logs if line["event"] == "saga_step"]
    assert statuses[-2:] == [("b", "compensated"), ("a", "compensated")]
    assert any(line["event"] == "saga_undo_detached" for line in logs) is (cancels == 2)


@pytest.mark.parametrize("sagas", [1, 3])
def test_the_shutdown_wait_counts_sagas_not_tasks(sagas: int) -> None:
    """Each cancelled saga leaves two tasks to wait for (its undo and its request):
    ``saga_undo_waiting`` said ``sagas: 2`` for one cancelled close."""
    started = 0
    all_in_flight = asyncio.Event()
    undo_may_end = asyncio.Event()

    async def ok() -> str:
        return "a"

    async def hangs() -> str:
        nonlocal started
        started += 1
        if started == sagas:
            all_in_flight.set()
        await asyncio.sleep(3600)
        return "b"

    async def undo(_: Any) -> None:
        await undo_may_end.wait()

    async def scenario() -> None:
        steps = [Step("a", "svc", ok, undo), Step("b", "svc", hangs)]
        tasks = [asyncio.create_task(Saga("demo", steps).run()) for _ in range(sagas)]
        await all_in_flight.wait()
        for task in tasks:
            task.cancel()
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(finish_undos(5))
        await asyncio.sleep(0.01)
        undo_may_end.set()
        await waiting
        await asyncio.gather(*tasks, return_exceptions=True)

    with capture_logs() as logs:
        asyncio.run(scenario())
    assert [line["sagas"] for line in logs if line["event"] == "saga_undo_waiting"] == [sagas]


def test_a_close_cancelled_while_it_undoes_a_failure_keeps_its_lock_until_the_undo_ends() -> None:
    """The engagement's lock (and the key's claim) are released as the request ends: a
    cancellation mid-undo ended it at once, so a reopen, another close or the retry of
    the same key (told 503, send it again) could run beside the undo still going on."""
    locks = MemoryEngagementLocks()
    undoing = asyncio.Event()
    undo_may_end = asyncio.Event()
    undone: list[str] = []

    async def freeze() -> str:
        return "frozen"

    async def unfreeze(_: Any) -> None:
        undoing.set()
        await undo_may_end.wait()
        undone.append("unfreeze")

    async def close() -> str:
        raise DownstreamTimeout("engagements")

    async def request() -> None:
        steps = [Step("freeze_findings", "findings", freeze, unfreeze), Step("close", "x", close)]
        async with locks.hold("acme-2026", "close"):
            await Saga("close_engagement", steps).run()

    async def scenario() -> str | None:
        task = asyncio.create_task(request())
        await undoing.wait()
        task.cancel()
        await asyncio.sleep(0.05)
        held_while_undoing = locks.running("acme-2026")
        undo_may_end.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        await finish_undos(5)
        return held_while_undoing

    assert asyncio.run(scenario()) == "close"
    assert undone == ["unfreeze"]


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (RetryableError("svc", "down", retry_after=2.0), "bad_gateway"),
        (RetryableTimeout("svc", "slow"), "gateway_timeout"),
        (PoolExhausted("svc", "busy"), "gateway_timeout"),
    ],
)
def test_a_step_that_failed_after_its_retries_is_still_a_problem(
    error: DownstreamError, code: str
) -> None:
    """A retryable 5xx that outlived its retries once made the saga raise a TypeError (500)."""

    async def fails() -> str:
        raise error

    with pytest.raises(DownstreamError) as raised:
        asyncio.run(Saga("demo", [Step("a", "svc", fails)]).run())
    assert (raised.value.code, raised.value.service) == (code, "svc")
    assert "step a" in raised.value.detail


def _chunks(*parts: bytes) -> Callable[[], Awaitable[bytes | None]]:
    remaining = list(parts)

    async def read() -> bytes | None:
        return remaining.pop(0) if remaining else None

    return read


async def _drain(stream: AsyncIterable[bytes]) -> bytes:
    return b"".join([chunk async for chunk in stream])


def test_streaming_digest_accepts_the_right_body_and_cuts_a_wrong_one() -> None:
    field = content_digest(b"hello world", ("sha-256", "sha-512"))
    body = CheckedBody(_chunks(b"hello ", b"world"), StreamingDigest(field), limit=100)
    assert asyncio.run(_drain(body)) == b"hello world"
    assert body.sent
    wrong = CheckedBody(_chunks(b"hello ", b"there"), StreamingDigest(field), limit=100)
    with pytest.raises(AuthenticationFailed) as raised:
        asyncio.run(_drain(wrong))
    assert raised.value.reason == "digest_mismatch"
    assert not wrong.sent


def test_streaming_body_over_the_limit_is_cut() -> None:
    body = CheckedBody(_chunks(b"x" * 60, b"x" * 60), None, limit=100)
    with pytest.raises(PayloadTooLarge):
        asyncio.run(_drain(body))


def test_the_rest_of_a_body_a_transport_left_is_checked_and_never_sent() -> None:
    """A transport that stops after the first chunk (the service answered and closed):
    ``rest()`` reads and checks the remainder, and the transport may not go on."""
    field = content_digest(b"hello world")

    async def first_then_rest(read: Callable[[], Awaitable[bytes | None]]) -> CheckedBody:
        body = CheckedBody(read, StreamingDigest(field), limit=100)
        chunks = aiter(body)
        assert await anext(chunks) == b"hello "
        await body.rest()
        with pytest.raises(RuntimeError):
            await anext(chunks)
        return body

    assert not asyncio.run(first_then_rest(_chunks(b"hello ", b"world"))).sent
    with pytest.raises(AuthenticationFailed):
        asyncio.run(first_then_rest(_chunks(b"hello ", b"there")))


@pytest.mark.parametrize("field", ["not a dictionary ((", "md5=:AAAA:", "sha-256=1"])
def test_unusable_content_digest_fields_are_rejected(field: str) -> None:
    with pytest.raises(AuthenticationFailed):
        StreamingDigest(field)


FILES = PassthroughRoute(
    path="/v1/engagements/{engagement_id}/files/{name}",
    service="findings",
    upstream_path="/e/{engagement_id}/f/{name}",
)


@pytest.mark.parametrize(
    ("raw", "upstream"),
    [
        ("a%20b", "/e/acme-2026/f/a%20b"),
        ("x%3F", "/e/acme-2026/f/x%3F"),
        ("%7Euser", "/e/acme-2026/f/~user"),
        ("r%C3", None),
    ],
)
def test_upstream_path_sends_the_octets_the_policy_decided_on(
    raw: str, upstream: str | None
) -> None:
    """Parameters come from the normalised path and are used as they are, never re-encoded."""
    try:
        decided = normalize_path(f"/v1/engagements/acme-2026/files/{raw}")
    except InvalidPath:
        assert upstream is None
        return
    name = decided.rsplit("/", 1)[1]
    assert upstream_path(FILES, {"engagement_id": "acme-2026", "name": name}, "") == upstream
    assert decided.endswith(upstream.rsplit("/f", 1)[1])


def test_upstream_path_keeps_the_query_and_refuses_dot_segments() -> None:
    path = upstream_path(FILES, {"engagement_id": "acme-2026", "name": "a%20b"}, "v=1&w=%2F")
    assert path == "/e/acme-2026/f/a%20b?v=1&w=%2F"
    dotted = PassthroughRoute(path="/v1/f/{name}.json", service="s", upstream_path="/f/{name}")
    with pytest.raises(InvalidPath):
        upstream_path(dotted, {"name": ".."}, "")


def test_passthrough_routes_reject_unknown_placeholders() -> None:
    with pytest.raises(ValueError, match="placeholders"):
        PassthroughRoute(path="/v1/things/{id}", service="s", upstream_path="/x/{other}")


def test_service_settings_validate_retry_and_breaker_bounds() -> None:
    with pytest.raises(ValueError, match="attempts"):
        Settings(services={"findings": {"url": "http://x", "retry": {"attempts": 0}}})
    with pytest.raises(ValueError, match="half_open_max_calls"):
        Settings(services={"findings": {"url": "http://x", "breaker": {"half_open_max_calls": 0}}})


@pytest.mark.parametrize(
    ("raw", "expected"),
    [(b"", ""), (b"page=2&q=%C3%A9", "page=2&q=%C3%A9"), (b"a=b;c", "a=b;c")],
)
def test_the_pass_through_query_is_the_ascii_the_caller_sent(raw: bytes, expected: str) -> None:
    request = Request({"type": "http", "query_string": raw, "headers": []})
    assert query_of(request) == expected


@pytest.mark.parametrize("raw", [b"q=\xff", b"q=\xc3\xa9"])
def test_a_pass_through_query_with_raw_octets_above_0x7f_is_a_400(raw: bytes) -> None:
    """Starlette's request.url decodes the query as UTF-8 and raised: a 500 before."""
    request = Request({"type": "http", "query_string": raw, "headers": []})
    with pytest.raises(BadRequest, match="ASCII"):
        query_of(request)


class _PublishHangs(MemoryEngagementState):
    """Writes the closed fact, then hangs: a Redis write applied whose answer (or the
    notice after it) has not come back when the request is cancelled."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    async def close(self, fact: ClosedFact, *, undone_if_unconfirmed: bool = False) -> None:
        await super().close(fact, undone_if_unconfirmed=undone_if_unconfirmed)
        self.written.set()
        await asyncio.sleep(3600)


def test_a_close_cancelled_while_it_publishes_takes_its_closed_fact_back_with_the_undo() -> None:
    """Shutdown cancels a close mid-publish (its fact already written): the saga undid
    the services' steps but left the fact, so every gateway kept the engagement closed
    (writes refused, the close's retry a 403) while the services had it open again."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        path = request.url.path
        engagement = {"id": "acme-2026", "client": "Acme", "kind": "pentest"}
        if path.endswith("/findings/freeze") or path.endswith("/findings/unfreeze"):
            return httpx.Response(200, json={"count": 2})
        if path.endswith("/reports") or "/reports/" in path:
            report = {"id": "R-0009", "engagement_id": "acme-2026", "kind": "final"}
            return httpx.Response(201, json={**report, "status": "ready"})
        if path.endswith("/close"):
            return httpx.Response(200, json={**engagement, "status": "closed"})
        return httpx.Response(200, json={**engagement, "status": "active"})

    settings = {
        name: ServiceSettings.model_validate({"url": f"http://{name}.internal"})
        for name in ("findings", "reports", "engagements")
    }
    state = _PublishHangs()

    async def scenario() -> None:
        bind_call_context(CallContext(Identity("bob", (), "proxy"), "acme-2026"))
        services = ServiceRegistry(settings, httpx.MockTransport(handler), keys={})
        store = MemoryIdempotencyStore(ttl_seconds=60)
        closing = CloseService(services, store, state, MemoryEngagementLocks())
        body = CloseRequest(reason="Retest complete; client signed off.")
        task = asyncio.create_task(closing.close("acme-2026", body, "close-cut-0001", "bob"))
        await state.written.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await finish_undos(5)
        await services.aclose()

    asyncio.run(scenario())
    assert "POST /engagements/acme-2026/reopen" in seen  # the services' steps were undone
    assert state.get("acme-2026") is None, "the undone close stayed closed for the gateways"
