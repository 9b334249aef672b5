"""Trace context and spans (app.core.tracing): the one propagation code, off and on."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.core import tracing
from app.core.errors import AccessDenied, DownstreamError
from app.core.tracing import add_trace_ids, extract, parent_of, span
from app.core.tracing import trace_headers as headers_for_parent
from app.domain.identity import Identity
from app.downstream.propagation import CallContext, propagation_headers

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.fixture
def recorded() -> Iterator[InMemorySpanExporter]:
    """Spans recorded in memory while the test runs; tracing off again after."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.install(provider.get_tracer("test"))
    yield exporter
    tracing.uninstall()
    provider.shutdown()


def trace_headers(traceparent: str | None, tracestate: str | None = None) -> dict[str, str]:
    """One outbound call's headers for a request that came with these."""
    return headers_for_parent(parent_of(traceparent, tracestate))


def parts(traceparent: str) -> list[str]:
    return traceparent.split("-")


def test_off_keeps_the_callers_trace_and_flags_with_a_new_span() -> None:
    version, trace_id, span_id, flags = parts(trace_headers(PARENT)["traceparent"])
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert span_id != "00f067aa0ba902b7"
    assert len(span_id) == 16


def test_off_keeps_an_unsampled_flag_and_the_tracestate() -> None:
    unsampled = PARENT[:-2] + "00"
    headers = trace_headers(unsampled, "vendor=abc,other=1")
    assert parts(headers["traceparent"])[3] == "00"
    assert headers["tracestate"] == "vendor=abc,other=1"


@pytest.mark.parametrize(
    "incoming",
    [None, "", "garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-abc-def-01"],
)
def test_an_absent_or_invalid_traceparent_starts_a_new_trace(incoming: str | None) -> None:
    headers = trace_headers(incoming, "vendor=ignored-without-a-parent")
    version, trace_id, span_id, flags = parts(headers["traceparent"])
    assert (version, flags) == ("00", "01")
    assert len(trace_id) == 32
    assert len(span_id) == 16
    assert trace_id != "0" * 32
    assert span_id != "0" * 16
    assert "tracestate" not in headers


@pytest.mark.parametrize("incoming", [None, "garbage"])
def test_every_call_of_a_request_without_a_trace_shares_one_new_trace(
    incoming: str | None,
) -> None:
    """An audit saw five downstream requests (three of them retries) of one request
    with five trace ids: each call started its own trace. The request starts one."""
    context = CallContext(Identity("alice", (), "k1"), "acme-2026", traceparent=incoming)
    calls = [parts(propagation_headers(context)["traceparent"]) for _ in range(5)]
    assert len({trace_id for _, trace_id, _, _ in calls}) == 1
    assert len({span_id for _, _, span_id, _ in calls}) == 5
    other = CallContext(Identity("alice", (), "k1"), "acme-2026", traceparent=incoming)
    assert parts(propagation_headers(other)["traceparent"])[1] != calls[0][1]


@given(
    trace_id=st.integers(1, 2**128 - 1),
    span_id=st.integers(1, 2**64 - 1),
    sampled=st.booleans(),
)
def test_any_valid_parent_is_continued(trace_id: int, span_id: int, sampled: bool) -> None:
    incoming = f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"
    _, child_trace, child_span, flags = parts(trace_headers(incoming)["traceparent"])
    assert child_trace == f"{trace_id:032x}"
    assert flags == ("01" if sampled else "00")
    assert int(child_span, 16) != 0


def test_spans_are_one_shared_no_op_when_off() -> None:
    assert not tracing.enabled()
    first, second = span("a"), tracing.stage_span("authn")
    assert first is second
    with first as inside:
        assert not inside.is_recording()
    assert add_trace_ids(None, "info", {"event": "x"}) == {"event": "x"}


def test_on_the_outbound_context_is_the_current_span(recorded: InMemorySpanExporter) -> None:
    with span("attempt", kind=SpanKind.CLIENT) as current:
        headers = trace_headers(PARENT)  # the caller's parent is not used: the span is
        context = current.get_span_context()
    assert parts(headers["traceparent"])[1] == f"{context.trace_id:032x}"
    assert parts(headers["traceparent"])[2] == f"{context.span_id:016x}"


def test_an_extracted_parent_is_continued_by_the_span(recorded: InMemorySpanExporter) -> None:
    parent = extract([(b"traceparent", PARENT.encode()), (b"tracestate", b"k=v")])
    assert extract([(b"accept", b"*/*")]) is None
    with span("GET", kind=SpanKind.SERVER, parent=parent):
        pass
    (finished,) = recorded.get_finished_spans()
    assert finished.context is not None
    assert finished.parent is not None
    assert f"{finished.context.trace_id:032x}" == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert f"{finished.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert finished.context.trace_state.get("k") == "v"


def test_log_lines_carry_the_span_ids(recorded: InMemorySpanExporter) -> None:
    with span("work") as current:
        line = add_trace_ids(None, "info", {"event": "x"})
        context = current.get_span_context()
    assert line["trace_id"] == f"{context.trace_id:032x}"
    assert line["span_id"] == f"{context.span_id:016x}"
    assert "trace_id" not in add_trace_ids(None, "info", {"event": "outside"})


def test_failures_are_typed_and_only_5xx_and_bugs_are_errors(
    recorded: InMemorySpanExporter,
) -> None:
    for error in (DownstreamError("findings", "down"), AccessDenied("no"), KeyError("bug")):
        with pytest.raises(type(error)), span(type(error).__name__):
            raise error
    by_name = {s.name: s for s in recorded.get_finished_spans()}
    assert by_name["DownstreamError"].attributes == {"error.type": "bad_gateway"}
    assert by_name["DownstreamError"].status.status_code is StatusCode.ERROR
    assert by_name["AccessDenied"].attributes == {"error.type": "forbidden"}
    assert by_name["AccessDenied"].status.status_code is StatusCode.UNSET
    assert by_name["KeyError"].status.status_code is StatusCode.ERROR


def test_a_cancelled_block_ends_its_span(recorded: InMemorySpanExporter) -> None:
    async def slow() -> None:
        with span("branch"):
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(slow())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    (finished,) = recorded.get_finished_spans()
    assert finished.attributes == {"error.type": "cancelled"}


def test_decisions_are_recorded_on_the_current_span(recorded: InMemorySpanExporter) -> None:
    with tracing.stage_span("authz"):
        tracing.record_decision(False, "no_match", ("p", "alice"), "rev1", "acme-2026")
    (finished,) = recorded.get_finished_spans()
    assert dict(finished.attributes or {}) == {
        "gateway.stage": "authz",
        "gateway.decision.result": "deny",
        "gateway.decision.reason": "no_match",
        "gateway.decision.matched_rule": "p,alice",
        "gateway.policy.revision": "rev1",
        "gateway.engagement": "acme-2026",
    }


@given(st.integers(2, 4), st.lists(st.sampled_from(["a=1", "b=2", "c=3"]), max_size=3))
def test_several_traceparent_fields_are_no_parent_for_any_reader(
    copies: int, states: list[str]
) -> None:
    """W3C: several traceparent fields are an invalid one (a new trace, no tracestate)."""
    raw = [(b"traceparent", PARENT.encode())] * copies + [
        (b"tracestate", s.encode()) for s in states
    ]
    assert extract(raw) is None
    assert tracing.incoming_fields([PARENT] * copies, states) == (None, None)
    assert tracing.incoming_fields([PARENT], states) == (PARENT, ",".join(states) or None)
