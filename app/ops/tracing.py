"""The OpenTelemetry SDK behind ``app.core.tracing``: provider, batch processor, OTLP exporter.

``start_tracing(settings)`` builds a ``TracerProvider`` (parent-based ratio
sampler, the gateway's resource) with one batch span processor feeding the
OTLP/HTTP exporter, and installs its tracer; ``TracingRuntime.shutdown`` gives
what is queued a bounded time to leave, then uninstalls. Keys unset in the
``tracing`` section are left to the SDK, which reads the standard ``OTEL_*``
environment variables.

A collector that is down or slow never reaches a request: spans only enter a
bounded queue (``on_end`` is a deque append); the export runs in the
processor's thread. What is lost is counted in
``gateway_trace_spans_dropped_total`` (``queue_full``: the queue was full;
``export_failed``: the exporter gave up on a batch), and one warning line a
minute at most says so. The SDK's own per-batch warnings are kept out of the log
(``_QuietExportLogs``); their last message is what that one line reports.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, Sampler, TraceIdRatioBased

from app import __version__
from app.core import tracing
from app.core.observability_settings import TracingSettings
from app.ops.metrics import count_spans_dropped

log = structlog.get_logger("gateway.tracing")

DEFAULT_SERVICE_NAME = "authz-gateway"
REPORT_EVERY_SECONDS = 60.0
# Where the SDK logs each failed export and each span dropped from a full queue.
# The processor warns once per span it drops from a full queue, on the request's path:
# below ERROR that logger is off while tracing runs (the drop is counted instead).
QUEUE_LOGGER = "opentelemetry.sdk._shared_internal"
EXPORT_LOGGERS = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.sdk._shared_internal",
)


def sdk_disabled() -> bool:
    """``OTEL_SDK_DISABLED=true``: the standard switch that turns the SDK into a no-op."""
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


@dataclass
class ReportClock:
    """Whether a report is due: the first at once, then one per ``every`` seconds at most.

    ``last`` is ``None`` until the first report: ``time.monotonic()`` may be near
    zero on a fresh machine, so no moment stands for "never".
    """

    every: float = REPORT_EVERY_SECONDS
    last: float | None = None

    def due(self, now: float) -> bool:
        if self.last is not None and now < self.last + self.every:
            return False
        self.last = now
        return True


@dataclass
class LossReport:
    """Spans lost since the last line, and the SDK's last word on why; one line a minute."""

    clock: ReportClock = field(default_factory=ReportClock)
    queue_full: int = 0
    export_failed: int = 0
    last_error: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def dropped(self, reason: str, count: int) -> None:
        count_spans_dropped(reason, count)
        with self._lock:
            if reason == "queue_full":
                self.queue_full += count
            else:
                self.export_failed += count
        self.maybe_report(time.monotonic())

    def maybe_report(self, now: float) -> bool:
        with self._lock:
            if not (self.queue_full or self.export_failed) or not self.clock.due(now):
                return False
            fields = {
                "queue_full": self.queue_full,
                "export_failed": self.export_failed,
                "last_error": self.last_error,
            }
            self.queue_full = self.export_failed = 0
        log.warning("trace_spans_dropped", **fields)
        return True


class _QuietExportLogs(logging.Filter):
    """Keeps the SDK's per-batch export warnings out of the log; remembers the last one."""

    def __init__(self, report: LossReport) -> None:
        super().__init__()
        self.report = report

    def filter(self, record: logging.LogRecord) -> bool:
        self.report.last_error = record.getMessage()[:300]
        return False


class ReportingExporter(SpanExporter):
    """The OTLP exporter, with every batch it gives up on counted as dropped."""

    def __init__(self, inner: SpanExporter, report: LossReport) -> None:
        self.inner = inner
        self.report = report
        self._closed = threading.Event()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception as exc:  # an exporter bug must not kill the processor's thread
            self.report.last_error = type(exc).__name__
            result = SpanExportResult.FAILURE
        if result is not SpanExportResult.SUCCESS:
            self.report.dropped("export_failed", len(spans))
        return result

    def shutdown(self) -> None:
        """Stop the inner exporter once (its retries end at once)."""
        if not self._closed.is_set():
            self._closed.set()
            self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's batch processor, with spans pushed out of its full queue counted."""

    def __init__(self, exporter: SpanExporter, report: LossReport, settings: TracingSettings):
        queue, batch = queue_and_batch(settings)
        super().__init__(
            exporter,
            max_queue_size=queue,
            schedule_delay_millis=_millis(settings.schedule_delay_seconds),
            max_export_batch_size=batch,
            export_timeout_millis=_millis(settings.export_timeout_seconds),
        )
        self.report = report
        # The SDK's deque (maxlen = the queue size): a full one drops its oldest span
        # on append. Read-only here; tests/unit/ops/test_tracing_export.py pins it.
        self._queue = self._batch_processor._queue

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        sampled = context is not None and context.trace_flags.sampled
        if sampled and len(self._queue) == self._queue.maxlen:
            self.report.dropped("queue_full", 1)
        super().on_end(span)

    def shutdown_within(self, seconds: float) -> None:
        """Export what is queued for at most ``seconds``, then stop."""
        self._batch_processor.shutdown(timeout_millis=int(seconds * 1000))


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


def queue_and_batch(settings: TracingSettings) -> tuple[int, int]:
    """Queue and batch sizes: settings, else ``OTEL_BSP_*``, else the SDK's defaults.

    A batch larger than the queue (a small queue set, the batch left at 512) is
    cut to the queue's size instead of stopping start-up.
    """
    queue = settings.max_queue_size or _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
    batch = settings.max_export_batch_size or _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
    return queue, min(batch, queue)


def _millis(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


def sampler(settings: TracingSettings) -> Sampler | None:
    """Parent-based ratio sampling; ``None`` leaves the choice to ``OTEL_TRACES_SAMPLER``."""
    if settings.sample_ratio is None:
        return None
    return ParentBased(TraceIdRatioBased(settings.sample_ratio))


def resource(settings: TracingSettings) -> Resource:
    """The gateway's resource; ``OTEL_SERVICE_NAME`` / ``OTEL_RESOURCE_ATTRIBUTES`` merged in."""
    attributes: dict[str, str] = {SERVICE_VERSION: __version__}
    if settings.service_name:
        attributes[SERVICE_NAME] = settings.service_name
    found = Resource.create(attributes)
    if str(found.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        found = found.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return found


@dataclass
class TracingRuntime:
    """One process's tracing: its provider and processor, installed until ``shutdown``."""

    provider: TracerProvider
    processor: CountingBatchSpanProcessor
    exporter: ReportingExporter
    settings: TracingSettings
    quiet: _QuietExportLogs

    def force_flush(self) -> bool:
        return self.processor.force_flush()

    def shutdown(self) -> None:
        """Give queued spans ``shutdown_seconds`` to leave, then stop exporting."""
        tracing.uninstall()
        grace = self.settings.shutdown_seconds
        # The exporter's retries wait on its shutdown event: set it when time is up.
        timer = threading.Timer(grace, self.exporter.shutdown)
        timer.daemon = True
        timer.start()
        try:
            self.processor.shutdown_within(grace)
        finally:
            timer.cancel()
            self.exporter.shutdown()
        self.report_now()
        for name in EXPORT_LOGGERS:
            logging.getLogger(name).removeFilter(self.quiet)
        logging.getLogger(QUEUE_LOGGER).setLevel(logging.NOTSET)

    def report_now(self) -> None:
        self.exporter.report.clock.last = None
        self.exporter.report.maybe_report(time.monotonic())


def start_tracing(
    settings: TracingSettings, exporter: SpanExporter | None = None
) -> TracingRuntime | None:
    """Install the SDK's tracer when tracing is on; ``None`` (and no-op spans) otherwise.

    ``exporter`` replaces the OTLP exporter (tests pass an in-memory one).
    """
    if not settings.enabled or sdk_disabled():
        return None
    report = LossReport()
    quiet = _QuietExportLogs(report)
    for name in EXPORT_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    logging.getLogger(QUEUE_LOGGER).setLevel(logging.ERROR)
    if exporter is None:
        # Imported here: protobuf and requests cost start-up time and memory when tracing is off.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = str(settings.endpoint) if settings.endpoint else None
        exporter = OTLPSpanExporter(endpoint=endpoint, timeout=settings.export_timeout_seconds)
    reporting = ReportingExporter(exporter, report)
    processor = CountingBatchSpanProcessor(reporting, report, settings)
    provider = TracerProvider(
        sampler=sampler(settings), resource=resource(settings), shutdown_on_exit=False
    )
    provider.add_span_processor(processor)
    tracing.install(provider.get_tracer("authz-gateway", __version__))
    return TracingRuntime(provider, processor, reporting, settings, quiet)
