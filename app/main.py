"""Application factory: ``create_app(settings)`` wires the pipeline stages.

edge (``EdgeMiddleware``) -> authn (``Authenticated``) -> authz (``Authorized``)
-> orchestration (``ServiceRegistry``) -> respond (problem+json handlers).
Everything that can fail on bad configuration fails here, before serving.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI

from app import __version__
from app.api.problems import install_problem_handlers
from app.api.routes import breakers, engagements, findings, health
from app.api.routes.passthrough import register_passthrough_routes
from app.authn.keys import load_keyring
from app.authn.verifier import SignatureVerifier
from app.authz.policy import PolicyEngine
from app.core.config import Settings, load_settings
from app.edge.correlation import EdgeMiddleware
from app.orchestration.client import ServiceRegistry, load_outbound_keys
from app.orchestration.idempotency import IdempotencyStore


def create_app(
    settings: Settings | None = None, transport: httpx.AsyncBaseTransport | None = None
) -> FastAPI:
    """Build the gateway; raises ``ConfigError`` if the settings cannot be served."""
    settings = settings or load_settings()
    verifier = SignatureVerifier(
        load_keyring(settings.signing.keys), settings.signing.max_skew_seconds
    )
    policy = PolicyEngine.load(settings.policy)
    outbound_keys = load_outbound_keys(settings.services)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = ServiceRegistry(settings.services, transport, outbound_keys)
        try:
            yield
        finally:
            await app.state.services.aclose()

    app = FastAPI(
        title="authz-gateway",
        version=__version__,
        summary="Signed identity in, policy decisions, resilient downstream calls.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.verifier = verifier
    app.state.policy = policy
    app.state.idempotency = IdempotencyStore(settings.orchestration.idempotency_ttl_seconds)
    install_problem_handlers(app)
    app.add_middleware(EdgeMiddleware, max_body_bytes=settings.edge.max_body_bytes)
    app.include_router(health.router)
    app.include_router(findings.router)
    app.include_router(engagements.router)
    app.include_router(breakers.router)
    register_passthrough_routes(app, settings.orchestration.passthrough, settings.services)
    return app
