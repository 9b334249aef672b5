"""Stub downstream services: real HTTP servers with seeded data and real faults.

``create_stub_app(name)`` builds the ``engagements``, ``findings`` or ``reports``
service. Each records the headers it received and whether the gateway's
outbound signature verified (``GET /_seen``, faulted requests included), counts
requests (``GET /_stats``) and takes faults from ``POST /_faults`` (replace),
``PATCH /_faults`` (merge); ``GET`` shows them, ``DELETE`` clears them;
``POST /_reset`` puts everything back as it started. Control paths start with
``/_`` and are never faulted. ``stub_server`` serves one with uvicorn as
``gateway stub`` does: requests in flight are cut off ``SHUTDOWN_SECONDS`` into a
shutdown, never waited out (a hang may last ``hang_max_seconds``, up to 600 s), and
the requests the stub holds are ended by the stub itself when the stop begins
(``app.stubs.stopping``), so a normal stop logs no error. ``stub_config`` is its
``uvicorn.Config``, declared once, for ``gateway stub`` and tests alike.
"""

from __future__ import annotations

import socket
from collections import deque
from collections.abc import Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.requests import ClientDisconnect

from app.api.problems import install_problem_handlers
from app.authn.keys import KeyRing
from app.authn.verifier import SignatureVerifier
from app.stubs.bodies import parse_model
from app.stubs.engagements import add_engagement_routes
from app.stubs.faults import FaultConfig, FaultInjector, FaultState
from app.stubs.findings import add_findings_routes
from app.stubs.limits import DEFAULT_MAX_BODY_BYTES
from app.stubs.recording import RememberedAnswers, SeenNonces
from app.stubs.reports import add_report_routes

STUB_NAMES = ("engagements", "findings", "reports")
SEEN_MEMORY = 1000  # the requests ``/_seen`` lists, the oldest forgotten first
# What requests in flight get on shutdown before they are cut off unanswered: a hung
# request (up to hang_max_seconds, 600) or a latency (60 s) held a stop that long.
SHUTDOWN_SECONDS = 2


def _control_routes(app: FastAPI, name: str, faults: FaultState, reset: Callable[[], None]) -> None:
    @app.get("/_health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": name}

    @app.get("/_seen")
    async def seen() -> list[dict[str, Any]]:
        return list(app.state.seen)

    @app.get("/_stats")
    async def stats() -> dict[str, int]:
        return {"requests": faults.requests, "faulted": faults.faulted}

    @app.get("/_faults")
    async def current_faults() -> FaultConfig:
        """The faults in force: ``fail_next`` is what is still owed, so the answer
        posted back re-arms no spent failure (the dice, as on any POST, restart)."""
        return faults.in_force()

    @app.post("/_faults")
    async def set_faults(request: Request) -> FaultConfig:
        """Replace every fault: fields left out take their defaults (the seed: the stub's)."""
        faults.replace(await parse_model(request, FaultConfig))
        return faults.config

    @app.patch("/_faults")
    async def merge_faults(request: Request) -> FaultConfig:
        """Change only the fields given; the others keep their values."""
        faults.merge(await parse_model(request, FaultConfig))
        return faults.in_force()

    @app.delete("/_faults")
    async def clear_faults() -> FaultConfig:
        faults.replace(FaultConfig())
        return faults.config

    @app.post("/_reset", status_code=204)
    async def reset_stub() -> Response:
        """The stub as it started: its faults, data, counters, ``/_seen`` and keys."""
        reset()
        return Response(status_code=204)


def create_stub_app(
    name: str,
    seed: int = 7,
    *,
    faults: FaultConfig | None = None,
    keyring: KeyRing | None = None,
    require_signature: bool = False,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """A stub service by name; unknown names are a ``ValueError``.

    ``keyring`` holds the gateway's outbound key(s) for this service; with it the
    stub verifies every request's signature, and rejects bad ones if
    ``require_signature``. A request body over ``max_body_bytes`` is refused with
    ``413`` (listed at ``/_seen`` as ``body_too_large``).
    """
    if name not in STUB_NAMES:
        raise ValueError(f"unknown stub {name!r}; choose one of {', '.join(STUB_NAMES)}")
    app = FastAPI(title=f"stub-{name}", docs_url=None, redoc_url=None)
    state = FaultState(faults, seed)
    app.state.shutdown_seconds = SHUTDOWN_SECONDS  # for whatever serves it (stub_config)
    app.state.seen = deque(maxlen=SEEN_MEMORY)
    app.state.faults = state
    app.state.idempotent = RememberedAnswers()
    app.state.nonces = SeenNonces()
    app.state.verifier = SignatureVerifier(keyring) if keyring is not None else None
    app.state.require_signature = require_signature and keyring is not None
    if name == "findings":
        reseed = add_findings_routes(app, seed)
    elif name == "engagements":
        reseed = add_engagement_routes(app)
    else:
        reseed = add_report_routes(app, seed)
    started = state.config

    def reset() -> None:
        state.reset(started)
        app.state.seen.clear()
        app.state.idempotent.clear()
        app.state.nonces.clear()
        reseed()

    _control_routes(app, name, state, reset)
    app.add_middleware(FaultInjector, state=state, max_body_bytes=max_body_bytes, service=name)
    install_problem_handlers(app)  # a refusal is problem+json, as the gateway's own
    app.add_exception_handler(ClientDisconnect, _client_gone)
    return app


class StubServer(uvicorn.Server):
    """uvicorn's server for a stub: its stop first ends what the stub holds (hangs,
    latencies, slow bodies: ``Stopping``), then stops as uvicorn does."""

    def __init__(self, config: uvicorn.Config, faults: FaultState) -> None:
        super().__init__(config)
        self.faults = faults

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.faults.stopping.begin()
        await super().shutdown(sockets)


def stub_server(app: FastAPI, *, port: int, host: str = "127.0.0.1", **options: Any) -> StubServer:
    """The server ``gateway stub`` runs, for a stub served in a test's own process too."""
    return StubServer(stub_config(app, port=port, host=host, **options), app.state.faults)


def stub_config(
    app: FastAPI, *, port: int, host: str = "127.0.0.1", **options: Any
) -> uvicorn.Config:
    """uvicorn's config for a stub served in-process, shut down as ``gateway stub`` is:
    requests in flight get ``SHUTDOWN_SECONDS``, then are cut off unanswered.

    uvicorn's default waits for every one: a test process stopping a stub with a hung
    request in flight waited for its ``hang_max_seconds``.
    """
    options.setdefault("log_config", None)  # the process's own logging, as gateway stub
    options.setdefault("access_log", False)
    return uvicorn.Config(
        app, host=host, port=port, timeout_graceful_shutdown=app.state.shutdown_seconds, **options
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    """A request whose client left (already listed at ``/_seen``): nothing to answer.

    Without a handler it reached uvicorn as an unhandled exception, a traceback at
    error level on the stderr of every cut upload (``gateway demo`` shares it).
    """
    return Response(status_code=499)  # never sent: the connection is gone
