"""Application factory: ``create_app(settings)`` wires the pipeline stages.

edge (``EdgeMiddleware``; the HTTP stack is composed in ``app.api.lane``) -> the
``Gate`` that every route's declared guard runs before the body is read: authn,
rate limit, authz (``app.api.pipeline``) -> the route's workflow over downstream
clients (``ServiceRegistry``) -> respond.
Everything that can fail on bad configuration fails here, before serving.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from typing import TYPE_CHECKING

import httpx
import structlog
from fastapi import FastAPI

from app import __version__
from app.api.decisions import Authorizer
from app.api.lane import gateway_app
from app.api.openapi import DESCRIPTION, install_openapi
from app.api.pipeline import REPLAY_CHECK_UNAVAILABLE, Gate
from app.api.problems import install_problem_handlers
from app.api.routes import GUARDED_ROUTERS, docs, health, metrics
from app.api.routes.passthrough import register_passthrough_routes
from app.api.routing import GuardedRoute
from app.authn.service import AuthnService
from app.authn.verifier import Reason
from app.authz.closed import EngagementState, MemoryEngagementState
from app.authz.closed_redis import RedisEngagementState
from app.authz.store import PolicyStore
from app.authz.sync import announcer, follow_notices
from app.authz.watch import policy_watcher
from app.core.config import SETTINGS_SNAPSHOT_ENV, Settings, load_settings, load_snapshot
from app.core.errors import ConfigError
from app.core.logging import configure_logging, reopen_log_files_on_sighup
from app.core.redis import SharedRedis, create_redis
from app.downstream.client import ServiceRegistry, load_outbound_keys
from app.ops.metrics import set_policy_revision, start_series
from app.ops.processes import freeze_startup_heap
from app.ops.runtime import ops_lifespan
from app.workflows.engagement_lock import (
    EngagementLocks,
    MemoryEngagementLocks,
    RedisEngagementLocks,
)
from app.workflows.engagement_state import Reconciler
from app.workflows.idempotency import (
    IdempotencyStore,
    MemoryIdempotencyStore,
    RedisIdempotencyStore,
)
from app.workflows.saga import UNDO_ON_SHUTDOWN_SECONDS, finish_undos

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from app.ops.tracing import TracingRuntime


def _start_tracing(settings: Settings, exporter: SpanExporter | None) -> TracingRuntime | None:
    """The OpenTelemetry SDK is imported only when tracing is on (start-up time, memory)."""
    if not settings.tracing.enabled:
        return None
    from app.ops.tracing import start_tracing

    return start_tracing(settings.tracing, exporter)


def create_app(
    settings: Settings | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    span_exporter: SpanExporter | None = None,
) -> FastAPI:
    """Build the gateway; raises ``ConfigError`` if the settings cannot be served.

    ``transport`` and ``span_exporter`` replace the downstream transport and the
    OTLP exporter (tests).
    """
    settings = settings or load_settings()
    # One Redis pool per process for nonces, rate limits and reload notices (opened
    # lazily); ops_lifespan reuses app.state.redis, the nonce store closes it last.
    redis = create_redis(settings.redis) if settings.redis.enabled else None
    authn = AuthnService.from_settings(settings, redis)
    policy = PolicyStore.open(settings.policy)
    policy.engagements = _engagement_state(settings, redis)
    watch_interval = settings.policy.watch_interval or None
    outbound_keys = load_outbound_keys(settings.services)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        _warn_unconfigured_services(settings)
        # Started here, not at build: a supervisor that only validates exports nothing.
        app.state.tracing = _start_tracing(settings, span_exporter)
        app.state.services = ServiceRegistry(settings.services, transport, outbound_keys)
        try:
            async with (
                authn.running(),
                ops_lifespan(app, settings, follow_notices(policy), lambda: policy.revision),
                policy_watcher(policy, watch_interval),
                reopen_log_files_on_sighup(),
                policy.engagements.running(),
                _reconciling(app.state.services, policy.engagements, settings),
            ):
                yield
                # Sagas cancelled by the end of the drain undo their steps first: the
                # pools and Redis close only after that (bounded).
                await finish_undos(UNDO_ON_SHUTDOWN_SECONDS)
        finally:
            await app.state.services.aclose()
            if app.state.tracing is not None:
                app.state.tracing.shutdown()
        # Only now: the line used to come from ops_lifespan, before the nonce store closed
        # Redis and before the service pools closed, and said redis_closed=false whenever
        # Redis was in use (the nonce store, not ops_lifespan, owns the client).
        structlog.get_logger("gateway.ops").info(
            "shutdown_complete", redis_closed=redis is not None, pools_closed=True
        )

    # Swagger UI and ReDoc served with their assets from this process (fastapi-offline),
    # never from a CDN; the HTTP stack is the edge, the lane, then FastAPI's router
    # (app/api/lane.py), with the server span outermost when tracing is on.
    app = gateway_app(
        settings.edge,
        settings.tracing.untraced_paths if settings.tracing.enabled else None,
        title="authz-gateway",
        version=__version__,
        summary="Signed identity in, policy decisions, resilient downstream calls.",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.redis = redis
    app.state.authn = authn
    app.state.verifier = authn.verifier
    app.state.policy = policy  # a PolicyStore: .current, .decide, .reload, .status
    app.state.idempotency = _idempotency_store(settings, redis)
    app.state.engagement_locks = _engagement_locks(settings, redis)
    app.state.gate = Gate(authn, policy, lambda: app.state.rate_limit)
    app.router.route_class = GuardedRoute  # pass-through routes are added on app.router
    app.state.authorizer = Authorizer.from_settings(settings.authorizer)
    install_problem_handlers(app)
    # The routers' routes join the app's own list, hot routes first, rather than through
    # include_router: FastAPI matches an included router's routes twice, through a layer
    # per router, on every request (see decision 0006). Paths never overlap, so the order
    # changes nothing but the cost; the routers carry their prefixes and tags already.
    for router in GUARDED_ROUTERS:  # hot routes first
        app.router.routes.extend(router.routes)
    orchestration = settings.orchestration
    register_passthrough_routes(
        app, orchestration.passthrough, settings.services, orchestration.downstream_deadline_seconds
    )
    app.router.routes.extend(health.router.routes)
    app.router.routes.extend(docs.router.routes)
    if settings.ops.metrics_enabled:
        app.router.routes.extend(metrics.router.routes)
    install_openapi(app)
    set_policy_revision(policy.revision)
    rate_limit = settings.ops.rate_limit
    limits = {"subject": rate_limit.subject, "engagement": rate_limit.engagement}
    start_series(
        redis=redis is not None,
        rate_limits=[scope for scope, rule in limits.items() if rule is not None],
        tracing=settings.tracing.enabled,
        signature_reasons=[*(reason.value for reason in Reason), REPLAY_CHECK_UNAVAILABLE],
    )
    policy.add_listener(announcer(app))
    return app


def _engagement_state(settings: Settings, redis: SharedRedis | None) -> EngagementState:
    """Closed engagements: shared through Redis when the gateway has one (decision 0009).

    In memory, the gateway knows what is closed once it has asked the engagements
    service (not ready until then); without that service, only its own closes.
    """
    if redis is not None:
        return RedisEngagementState(
            redis, settings.policy.engagement_state, settings.redis.socket_timeout
        )
    return MemoryEngagementState(synced="engagements" not in settings.services)


def _reconciling(
    services: ServiceRegistry, state: EngagementState, settings: Settings
) -> AbstractAsyncContextManager[None]:
    """Reconcile closed engagements from the engagements service, when there is one."""
    if "engagements" not in services.names:
        return nullcontext()
    return Reconciler(services, state, settings.policy.engagement_state).running()


def _idempotency_store(settings: Settings, redis: SharedRedis | None) -> IdempotencyStore:
    """Shared through Redis when the gateway has one, as nonces and rate limits are."""
    orchestration = settings.orchestration
    if redis is None:
        return MemoryIdempotencyStore(
            orchestration.idempotency_ttl_seconds, capacity=orchestration.idempotency_capacity
        )
    return RedisIdempotencyStore(
        redis,
        orchestration.idempotency_ttl_seconds,
        orchestration.idempotency_lease_seconds,
        settings.redis.socket_timeout,
    )


def _engagement_locks(settings: Settings, redis: SharedRedis | None) -> EngagementLocks:
    """One close or reopen of an engagement at a time: across gateways with Redis."""
    if redis is None:
        return MemoryEngagementLocks()
    return RedisEngagementLocks(
        redis, settings.orchestration.idempotency_lease_seconds, settings.redis.socket_timeout
    )


def _warn_unconfigured_services(settings: Settings) -> None:
    """Once at start-up: the typed routes that will answer 503 (an authorizer needs none)."""
    missing = {n: r for n, r in health.ROUTE_SERVICES.items() if n not in settings.services}
    if missing:
        structlog.get_logger("gateway.ops").warning(
            "services_not_configured",
            services=sorted(missing),
            routes_answering_503=sorted({r for routes in missing.values() for r in routes}),
        )


def create_app_from_env() -> FastAPI:
    """uvicorn factory for worker processes: the settings the supervisor validated (its
    snapshot), else from the environment; a configuration error is one line and exit 2
    (a traceback per worker the supervisor starts again, before)."""
    snapshot = os.environ.get(SETTINGS_SNAPSHOT_ENV)
    try:
        settings = load_snapshot(snapshot) if snapshot else load_settings()
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc.detail}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log.level, settings.log.format, decisions=settings.log.decisions)
    app = create_app(settings)
    freeze_startup_heap()
    return app
