"""Every Prometheus metric family of the gateway, defined once.

Other stages call the small ``observe_*``/``count_*``/``set_*`` functions here;
none of them touches prometheus-client directly, so names, labels and buckets
stay in one place. Label values are bounded: routes are templates (never raw
paths), methods outside the HTTP set become ``OTHER``, reasons are code words.

Several worker processes: when ``PROMETHEUS_MULTIPROC_DIR`` is set (``gateway
serve --workers N`` sets it) prometheus-client keeps values in per-process files
and ``render()`` merges them; gauges use ``livemax`` (the worst value among live
workers; a worker's values are dropped when it shuts down).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import Scope

from app.ops.processes import MULTIPROC_ENV, forget_dead_workers

CONTENT_TYPE = CONTENT_TYPE_LATEST
UNMATCHED_ROUTE = "<unmatched>"
BREAKER_STATES = {"closed": 0, "half_open": 1, "half-open": 1, "open": 2}
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "gateway_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ("route", "method", "status"),
)
REQUEST_SECONDS = Histogram(
    "gateway_http_request_duration_seconds",
    "Time from request start to the end of the response, by route template and method.",
    ("route", "method"),
    buckets=_LATENCY_BUCKETS,
)
DECISIONS = Counter(
    "gateway_authz_decisions",
    "Authorization decisions, by result (allow/deny) and reason.",
    ("result", "reason"),
)
SIGNATURE_FAILURES = Counter(
    "gateway_signature_failures",
    "Requests refused by the signature check, by machine reason.",
    ("reason",),
)
SIGNATURES_DATED_AHEAD = Counter(
    "gateway_signatures_dated_ahead",
    "Accepted signatures whose created lies more than 5 s after the gateway's clock, by key "
    "id: a signer whose clock runs ahead weakens the replay fence by as much.",
    ("key_id",),
)
DOWNSTREAM_CALLS = Counter(
    "gateway_downstream_calls",
    "Downstream call attempts, by service, outcome and attempt number.",
    ("service", "outcome", "attempt"),
)
BREAKER_STATE = Gauge(
    "gateway_breaker_state",
    "Circuit breaker state per service: 0 closed, 1 half-open, 2 open.",
    ("service",),
    multiprocess_mode="livemax",
)
BREAKER_TRANSITIONS = Counter(
    "gateway_breaker_transitions",
    "Circuit breaker state changes, by service and new state.",
    ("service", "to"),
)
DOWNSTREAM_RETRIES = Counter(
    "gateway_downstream_retries",
    "Downstream attempts that were retried, by service.",
    ("service",),
)
DOWNSTREAM_BODY_FAILURES = Counter(
    "gateway_downstream_body_failures",
    "Streamed answers (pass-through) whose body broke off after the head, by service.",
    ("service",),
)
DOWNSTREAM_SECONDS = Histogram(
    "gateway_downstream_call_duration_seconds",
    "Downstream attempt latency, by service and outcome (response, or the problem code).",
    ("service", "outcome"),
    buckets=_LATENCY_BUCKETS,
)
POLICY_REVISION = Gauge(
    "gateway_policy_revision_info",
    "The policy revision in force (value 1 on the current revision's series).",
    ("revision",),
    multiprocess_mode="livemax",
)
RELOAD_FAILURES = Counter(
    "gateway_policy_reload_failures",
    "Policy reloads refused (the last good policy stayed in force).",
)
RATE_LIMITED = Counter(
    "gateway_rate_limited",
    "Requests refused with 429, by the limit that was spent (subject/engagement).",
    ("scope",),
)
SHADOW_FLIPS = Counter(
    "gateway_policy_shadow_flips",
    "Requests the shadow (candidate) policy would decide otherwise, by direction "
    "(allow_to_deny: live allowed, the candidate would deny; deny_to_allow: the reverse).",
    ("direction",),
)
REDIS_ERRORS = Counter(
    "gateway_redis_errors",
    "Redis operations that failed (unreachable or timed out), by component.",
    ("component",),
)

TRACE_SPANS_DROPPED = Counter(
    "gateway_trace_spans_dropped",
    "Spans never exported: queue_full (the export queue was full) or export_failed.",
    ("reason",),
)

_revision: list[str] = []


def route_label(scope: Scope) -> str:
    """The matched route's template, read after the app ran; bounded cardinality."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


# Label children of the per-request series, looked up once: ``labels()`` costs about
# 2 µs a call (lock, tuple, dict), paid several times on every request otherwise.
# Keys are bounded label values (route templates, methods, statuses, code words);
# these families are never cleared or removed, so a cached child stays the live one.
_request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
_decision_children: dict[tuple[str, str], Counter] = {}
_downstream_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}


def _count_and_time(
    cache: dict[tuple[str, str, int], tuple[Counter, Histogram]],
    counter: Counter,
    histogram: Histogram,
    key: tuple[str, str, int],
    seconds: float,
) -> None:
    """Count ``key`` (all three labels) and time it (the first two), via cached children."""
    children = cache.get(key)
    if children is None:
        first, second, third = key
        children = (counter.labels(first, second, str(third)), histogram.labels(first, second))
        cache[key] = children
    children[0].inc()
    children[1].observe(seconds)


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    method = method if method in _METHODS else "OTHER"
    _count_and_time(_request_children, REQUESTS, REQUEST_SECONDS, (route, method, status), seconds)


def count_decision(result: str, reason: str) -> None:
    child = _decision_children.get((result, reason))
    if child is None:
        child = _decision_children.setdefault((result, reason), DECISIONS.labels(result, reason))
    child.inc()


def count_signature_failure(reason: str) -> None:
    SIGNATURE_FAILURES.labels(reason).inc()


def count_signature_dated_ahead(key_id: str) -> None:
    SIGNATURES_DATED_AHEAD.labels(key_id).inc()


def start_key_series(key_ids: Iterable[str]) -> None:
    """Each signing key's dated-ahead count at 0 (at start and when a reload adds keys):
    an alert on ``increase(...) > 0`` sees a signer's first signature from the future."""
    for key_id in key_ids:
        SIGNATURES_DATED_AHEAD.labels(key_id)


def observe_downstream(service: str, outcome: str, attempt: int, seconds: float = 0.0) -> None:
    key = (service, outcome, attempt)
    _count_and_time(_downstream_children, DOWNSTREAM_CALLS, DOWNSTREAM_SECONDS, key, seconds)


def count_downstream_body_failure(service: str) -> None:
    DOWNSTREAM_BODY_FAILURES.labels(service).inc()


def count_retry(service: str) -> None:
    DOWNSTREAM_RETRIES.labels(service).inc()


def count_breaker_transition(service: str, state: str) -> None:
    """Record a transition to ``state`` and the gauge's new value."""
    BREAKER_TRANSITIONS.labels(service, state).inc()
    set_breaker_state(service, state)


def set_breaker_state(service: str, state: str) -> None:
    """``state`` is pybreaker's name: ``closed``, ``half-open`` or ``open``."""
    BREAKER_STATE.labels(service).set(BREAKER_STATES[state])


def set_policy_revision(revision: str) -> None:
    """Mark ``revision`` as the one in force; the previous series is dropped."""
    for old in _revision:
        if old != revision:
            POLICY_REVISION.labels(old).set(0)  # what other workers' files still say
            POLICY_REVISION.remove(old)
    _revision[:] = [revision]
    POLICY_REVISION.labels(revision).set(1)


def count_reload_failure() -> None:
    RELOAD_FAILURES.inc()


def count_rate_limited(scope: str) -> None:
    RATE_LIMITED.labels(scope).inc()


def count_shadow_flip(direction: str) -> None:
    SHADOW_FLIPS.labels(direction).inc()


def count_redis_error(component: str) -> None:
    REDIS_ERRORS.labels(component).inc()


def count_spans_dropped(reason: str, count: int = 1) -> None:
    """``reason``: ``queue_full`` or ``export_failed``; called from the exporter's thread."""
    TRACE_SPANS_DROPPED.labels(reason).inc(count)


# The components that count Redis failures (``count_redis_error``), and the reasons a
# span is dropped: every series an alert may watch, known before its first event.
REDIS_COMPONENTS = (
    "engagement_lock",
    "engagement_state",
    "health",
    "idempotency",
    "nonces",
    "rate_limit",
    "reload_notices",
)
SPAN_DROP_REASONS = ("queue_full", "export_failed")


def start_series(
    *,
    redis: bool,
    rate_limits: Sequence[str],
    tracing: bool,
    signature_reasons: Sequence[str] = (),
) -> None:
    """Every error counter an alert watches, at 0 from the start.

    A labelled counter has no series until its first increment, and ``increase()`` or
    ``rate()`` over a series born at 1 sees no change: the very first Redis error of a
    component, a first 429, a first dropped span went unseen by ``increase(...) > 0``
    (Prometheus's own advice: initialise the series you know of). Only what this
    process can count: Redis components with Redis, the configured limits, tracing on,
    and every reason a signature is refused for (a first ``replayed`` is an attack's).
    """
    for reason in signature_reasons:
        SIGNATURE_FAILURES.labels(reason)
    if redis:
        for component in REDIS_COMPONENTS:
            REDIS_ERRORS.labels(component)
    for scope in rate_limits:
        RATE_LIMITED.labels(scope)
    if tracing:
        for reason in SPAN_DROP_REASONS:
            TRACE_SPANS_DROPPED.labels(reason)


def render() -> bytes:
    """The exposition text; merges every worker's values in multiprocess mode."""
    if not os.environ.get(MULTIPROC_ENV):
        return generate_latest(REGISTRY)
    forget_dead_workers(Path(os.environ[MULTIPROC_ENV]))
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # untyped upstream
    return generate_latest(registry)
