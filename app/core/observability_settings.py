"""The ``tracing`` section and the decision log sink (``log.decisions``).

They live beside each other because both say where the gateway's evidence goes:
spans to an OTLP/HTTP collector, decision lines to a file of their own. A key left
unset in ``tracing`` falls back to the standard ``OTEL_*`` environment variable
that the OpenTelemetry SDK reads (named in each description).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Self

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# Health probes and scrapes: a span each would be noise in every trace store.
UNTRACED_PATHS = ("/healthz", "/readyz", "/metrics")


class TracingSettings(_Section):
    """OpenTelemetry traces exported over OTLP/HTTP by a batch processor; off by default."""

    enabled: bool = Field(
        default=False,
        description="export spans (OTEL_SDK_DISABLED=true still turns them off)",
    )
    endpoint: AnyHttpUrl | None = Field(
        default=None,
        description="the collector's traces URL, e.g. http://collector:4318/v1/traces; else "
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces, or "
        "http://localhost:4318/v1/traces",
    )
    sample_ratio: Annotated[float, Field(ge=0, le=1)] | None = Field(
        default=None,
        description="share of new traces recorded (a caller's sampled flag is followed); "
        "else OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG, else 1.0",
    )
    service_name: Annotated[str, Field(min_length=1, max_length=128)] | None = Field(
        default=None,
        description="resource service.name; else OTEL_SERVICE_NAME, else authz-gateway",
    )
    max_queue_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None,
        description="spans held for export; beyond it spans are dropped and counted "
        "(gateway_trace_spans_dropped_total); else OTEL_BSP_MAX_QUEUE_SIZE, else 2048",
    )
    max_export_batch_size: Annotated[int, Field(ge=1, le=1_000_000)] | None = Field(
        default=None, description="spans per export; else OTEL_BSP_MAX_EXPORT_BATCH_SIZE, else 512"
    )
    schedule_delay_seconds: Annotated[float, Field(gt=0, le=3600)] | None = Field(
        default=None, description="time between exports; else OTEL_BSP_SCHEDULE_DELAY, else 5"
    )
    export_timeout_seconds: Annotated[float, Field(gt=0, le=300)] | None = Field(
        default=None,
        description="one export's time, retries included; else OTEL_EXPORTER_OTLP_TRACES_TIMEOUT "
        "or OTEL_EXPORTER_OTLP_TIMEOUT, else 10",
    )
    shutdown_seconds: Annotated[float, Field(ge=0, le=300)] = Field(
        default=2.0, description="at shutdown, time given to export what is queued"
    )
    untraced_paths: tuple[str, ...] = Field(
        default=UNTRACED_PATHS, description="request paths that get no span"
    )

    @model_validator(mode="after")
    def _batch_within_queue(self) -> Self:
        queue, batch = self.max_queue_size, self.max_export_batch_size
        if queue is not None and batch is not None and batch > queue:
            raise ValueError("max_export_batch_size must not exceed max_queue_size")
        return self


class DecisionLogSettings(_Section):
    """Where decision lines go: the main log stream (stderr), a file of their own, or both."""

    file: Path | None = Field(
        default=None,
        description="append one JSON object a line here; reopened on SIGHUP (logrotate "
        "without copytruncate)",
    )
    main_log: bool = Field(
        default=True,
        description="also write decision lines to the main log stream; false needs a file",
    )
    deny_only: bool = Field(
        default=False, description="the file gets denials only (the main log is not filtered)"
    )

    @model_validator(mode="after")
    def _somewhere(self) -> Self:
        if self.file is None and not self.main_log:
            raise ValueError("main_log false needs a file: decisions must be written somewhere")
        if self.file is None and self.deny_only:
            raise ValueError("deny_only filters the file: set file too")
        return self
