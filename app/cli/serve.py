"""``gateway serve``: validate the configuration, then serve under uvicorn.

With ``--workers N`` (N > 1) uvicorn starts N processes that each build the app
from the environment (``app.main:create_app_from_env``); the configuration is
still checked here first, so a bad file stops start-up with one line. Several
workers need ``redis.url``: in-memory replay protection is per process. On SIGTERM
uvicorn stops accepting, lets in-flight requests finish for
``ops.graceful_shutdown_seconds``, runs the lifespan shutdown (pools closed) and
exits by re-raising SIGTERM, so supervisors see a clean signal exit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any, cast

import uvicorn

from app.cli.ports import tcp_port
from app.core.config import CONFIG_FILE_ENV, Settings, load_settings
from app.core.errors import ConfigError
from app.core.logging import configure_logging
from app.edge.protocol_factory import GatewayProtocolFactory
from app.ops.processes import (
    freeze_startup_heap,
    multiprocess_metrics_dir,
    without_multiprocess_metrics,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

APP_FACTORY = "app.main:create_app_from_env"


def register(commands: Any) -> None:
    parser = commands.add_parser("serve", help="run the gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=tcp_port, default=8000)
    parser.add_argument("--config", help=f"YAML settings file (else ${CONFIG_FILE_ENV})")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1: no supervisor)"
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.config:
        os.environ[CONFIG_FILE_ENV] = args.config
    if args.workers < 1:
        print("gateway: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.workers == 1:
        with multiprocess_metrics_dir(1):
            built = _build()
            return _serve(args, *built) if built else 2
    with without_multiprocess_metrics():  # the supervisor only validates
        built = _build()
    if built is None:
        return 2
    if not built[0].redis.enabled:
        # Nonces, rate limits and reload notices would be per worker: a request replayed
        # to another worker would be accepted. Refuse rather than serve that.
        print(
            f"gateway: configuration error: --workers {args.workers} needs redis.url "
            "(in-memory nonces are per process; a replay to another worker would pass)",
            file=sys.stderr,
        )
        return 2
    with multiprocess_metrics_dir(args.workers):
        return _serve(args, built[0], APP_FACTORY)


def _build() -> tuple[Settings, FastAPI] | None:
    """Settings and app, or ``None`` after printing the one-line configuration error."""
    from app.main import create_app  # imported late: settings and metrics dir first

    try:
        settings = load_settings()
        configure_logging(settings.log.level, settings.log.format, decisions=settings.log.decisions)
        return settings, create_app(settings)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc.detail}", file=sys.stderr)
        return None


def _serve(args: argparse.Namespace, settings: Settings, app: FastAPI | str) -> int:
    if not isinstance(app, str):
        freeze_startup_heap()  # workers built from the factory freeze their own heap
    # uvloop + httptools: the fastest loop and HTTP parser uvicorn has (both come with
    # uvicorn[standard]); named, not "auto", so a missing one fails loudly at start. The
    # httptools protocol is ours: with a header-read timeout (server_options).
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        timeout_graceful_shutdown=settings.ops.graceful_shutdown_seconds,
        factory=isinstance(app, str),
        workers=args.workers if isinstance(app, str) else None,
        loop="uvloop",
        # No WebSocket route exists; with a WebSocket implementation loaded, an upgrade
        # request skipped the edge (its scope is not "http": no path normalisation, a
        # plain-text 403). Without one, uvicorn serves it as the plain request it also is.
        ws="none",
        # A worker answers the supervisor's health ping only once it has imported the
        # gateway; uvicorn's 5 s default killed and respawned workers in a loop on a
        # loaded host. 30 s still finds a hung worker.
        timeout_worker_healthcheck=30,
        **server_options(settings),
    )
    return 0


def server_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's ``http`` protocol and ``limit_concurrency`` from ``edge`` settings.

    The protocol factory pickles cheaply, so a ``--workers`` supervisor hands it to
    its worker processes without slowing their start (``app.edge.protocol_factory``).
    """
    edge = settings.edge
    protocol = GatewayProtocolFactory(
        edge.header_timeout_seconds, edge.body_timeout_seconds, edge.send_timeout_seconds
    )
    return {
        # uvicorn accepts any protocol factory here, though it annotates a class.
        "http": cast("type[asyncio.Protocol]", protocol),
        # uvicorn refuses once connections (this one included) reach the limit: +1 lets
        # exactly max_connections be served.
        "limit_concurrency": edge.max_connections + 1,
    }
