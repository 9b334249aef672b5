"""The SDK side of tracing (app.ops.tracing): bounded queue, drops counted, one line a minute."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from app.core import tracing
from app.core.observability_settings import TracingSettings
from app.ops.tracing import (
    EXPORT_LOGGERS,
    CountingBatchSpanProcessor,
    LossReport,
    ReportClock,
    ReportingExporter,
    queue_and_batch,
    resource,
    start_tracing,
)


def dropped(reason: str) -> float:
    value = REGISTRY.get_sample_value("gateway_trace_spans_dropped_total", {"reason": reason})
    return value or 0.0


class BlockedExporter(SpanExporter):
    """Holds the processor's thread in ``export`` until released."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.exported = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.entered.set()
        self.release.wait(30)
        self.exported += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        self.release.set()


class FailingExporter(SpanExporter):
    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if self.error is not None:
            raise self.error
        logging.getLogger(EXPORT_LOGGERS[0]).error("Failed to export spans batch code: 503")
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        return None


@given(
    start=st.floats(0, 1e12),
    early=st.floats(0, 59.999),
    late=st.floats(60, 1e6),
)
def test_a_report_is_due_at_once_then_once_a_minute(
    start: float, early: float, late: float
) -> None:
    clock = ReportClock()
    assert clock.due(start)  # even when the monotonic clock is near zero
    assert not clock.due(start + early)
    assert clock.due(start + late)
    assert not clock.due(start + late)


def test_many_drops_make_one_line_a_minute() -> None:
    report = LossReport()
    with capture_logs() as logs:
        for _ in range(100):
            report.dropped("export_failed", 5)
        report.dropped("queue_full", 1)
        assert report.clock.last is not None
        assert report.maybe_report(report.clock.last + 61)
    lines = [entry for entry in logs if entry["event"] == "trace_spans_dropped"]
    assert len(lines) == 2
    assert lines[0]["export_failed"] == 5
    assert (lines[1]["export_failed"], lines[1]["queue_full"]) == (495, 1)


def test_a_full_queue_drops_and_counts_without_blocking() -> None:
    before = dropped("queue_full")
    exporter = BlockedExporter()
    settings = TracingSettings(max_queue_size=2, max_export_batch_size=2)
    processor = CountingBatchSpanProcessor(exporter, LossReport(), settings)
    provider = TracerProvider()
    provider.add_span_processor(processor)
    tracer = provider.get_tracer("test")
    for name in ("a", "b"):
        tracer.start_span(name).end()
    assert exporter.entered.wait(10)  # the thread holds a, b in a stuck export
    for index in range(5):
        tracer.start_span(f"late-{index}").end()  # returns at once: a deque append
    assert dropped("queue_full") - before == 3
    exporter.release.set()
    processor.shutdown_within(5)
    assert exporter.exported == 4


@pytest.mark.parametrize("error", [None, RuntimeError("exporter bug")])
def test_a_failed_export_counts_its_spans(error: Exception | None) -> None:
    before = dropped("export_failed")
    report = LossReport()
    exporter = ReportingExporter(FailingExporter(error), report)
    provider = TracerProvider()
    spans = []
    for name in ("a", "b", "c"):
        span = provider.get_tracer("t").start_span(name)
        span.end()
        spans.append(span)
    with capture_logs() as logs:
        assert exporter.export(spans) is SpanExportResult.FAILURE  # type: ignore[arg-type]
    assert dropped("export_failed") - before == 3
    (line,) = [entry for entry in logs if entry["event"] == "trace_spans_dropped"]
    assert line["export_failed"] == 3


def test_the_sdks_own_export_warnings_are_kept_out_of_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    memory = InMemorySpanExporter()
    runtime = start_tracing(TracingSettings(enabled=True), FailingExporter())
    assert runtime is not None
    try:
        with caplog.at_level(logging.WARNING):
            logging.getLogger(EXPORT_LOGGERS[0]).error("Failed to export spans batch code: 503")
        assert caplog.records == []
        assert runtime.exporter.report.last_error == "Failed to export spans batch code: 503"
    finally:
        runtime.shutdown()
    assert not tracing.enabled()
    memory.shutdown()


def test_off_by_default_and_by_the_standard_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    assert start_tracing(TracingSettings()) is None
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert start_tracing(TracingSettings(enabled=True)) is None
    assert not tracing.enabled()


def test_on_installs_a_tracer_until_shutdown() -> None:
    memory = InMemorySpanExporter()
    runtime = start_tracing(TracingSettings(enabled=True, sample_ratio=1.0), memory)
    assert runtime is not None
    with tracing.span("work"):
        pass
    runtime.force_flush()
    runtime.shutdown()
    assert [s.name for s in memory.get_finished_spans()] == ["work"]
    assert not tracing.enabled()


def test_the_service_name_comes_from_settings_then_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    assert resource(TracingSettings()).attributes["service.name"] == "authz-gateway"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "gw-eu")
    assert resource(TracingSettings()).attributes["service.name"] == "gw-eu"
    named = TracingSettings(service_name="gw-set")
    assert resource(named).attributes["service.name"] == "gw-set"


@pytest.mark.parametrize(
    ("settings", "env", "sizes"),
    [
        (TracingSettings(), {}, (2048, 512)),
        (TracingSettings(max_queue_size=8), {}, (8, 8)),
        (TracingSettings(), {"OTEL_BSP_MAX_QUEUE_SIZE": "100"}, (100, 100)),
        (TracingSettings(), {"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "junk"}, (2048, 512)),
        (TracingSettings(max_queue_size=64, max_export_batch_size=16), {}, (64, 16)),
    ],
)
def test_a_batch_never_exceeds_the_queue(
    settings: TracingSettings,
    env: dict[str, str],
    sizes: tuple[int, int],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OTEL_BSP_MAX_QUEUE_SIZE", raising=False)
    monkeypatch.delenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert queue_and_batch(settings) == sizes
