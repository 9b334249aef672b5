"""``gateway serve``: validate the configuration, then serve under uvicorn.

With ``--workers N`` (N > 1) uvicorn starts N processes that each build the app
(``app.main:create_app_from_env``) from the settings validated here, written to a
private snapshot (``settings_snapshot``): a bad file stops start-up with one line,
and a worker started again later never reads a file edited since. Several
workers need Redis (``redis.url``, or Sentinel's ``redis.nodes``): in-memory replay
protection is per process. On SIGTERM
uvicorn stops accepting, lets in-flight requests finish for
``ops.graceful_shutdown_seconds``, runs the lifespan shutdown (pools closed) and
exits by re-raising SIGTERM, so supervisors see a clean signal exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import uvicorn

from app.cli.ports import tcp_port
from app.core.config import CONFIG_FILE_ENV, SETTINGS_SNAPSHOT_ENV, Settings, load_settings
from app.core.errors import ConfigError
from app.core.logging import configure_logging
from app.edge.protocol_factory import GatewayProtocolFactory
from app.ops.processes import (
    freeze_startup_heap,
    multiprocess_metrics_dir,
    without_multiprocess_metrics,
)
from app.ops.supervisor import Supervisor

if TYPE_CHECKING:
    from fastapi import FastAPI

APP_FACTORY = "app.main:create_app_from_env"
# uvicorn's exit status when it cannot start serving (its STARTUP_FAILURE): kept for
# a port that is taken, found here before start-up.
STARTUP_FAILURE = 3


def cannot_listen(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (as uvicorn binds it), or ``None``.

    A check before the app is built, not a reservation: the port can still be taken
    before uvicorn binds it, which then fails as it did before, exit 3 all the same.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn sets it
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


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
    taken = cannot_listen(args.host, args.port)
    if taken is not None:
        # Before the app is built: uvicorn finds it only after the lifespan has run
        # (connections opened, the engagement state reconciled), then exits 3.
        print(f"gateway: cannot listen on {args.host}:{args.port}: {taken}", file=sys.stderr)
        return STARTUP_FAILURE
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
            f"gateway: configuration error: --workers {args.workers} needs shared state: "
            "redis.url, or redis.mode sentinel with redis.nodes (in-memory nonces are per "
            "process; a replay to another worker would pass)",
            file=sys.stderr,
        )
        return 2
    with multiprocess_metrics_dir(args.workers), settings_snapshot(built[0]):
        return _serve(args, built[0], APP_FACTORY)


@contextlib.contextmanager
def settings_snapshot(settings: Settings) -> Iterator[Path]:
    """The validated settings in a private file the workers build their apps from.

    A worker started again later (one that died, or all of them on SIGHUP) read the
    configuration file as it was then: an edit since, valid or not, gave one pod's
    workers two configurations, or a crash loop of replacements dying on it while
    the supervisor, blocked on one, saw SIGTERM only after its health-check timeout.
    Options weighed: this snapshot (chosen: a pod serves what it validated; a change
    needs a restart, as a change to the environment always did) against re-reading
    with a clean one-line exit (a crash loop still, and two configurations when the
    edit is valid). The file may hold a Redis URL's password, as the configuration
    file may: owner-only, in an owner-only directory, removed when serving ends.
    """
    with tempfile.TemporaryDirectory(prefix="gateway-settings-") as directory:
        path = Path(directory) / "settings.json"
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as stream:
            stream.write(settings.model_dump_json().encode())
        # The workers inherit this environment: the snapshot, and no configuration file
        # (pydantic-settings would merge the file's keys under the snapshot's).
        saved = {name: os.environ.get(name) for name in (SETTINGS_SNAPSHOT_ENV, CONFIG_FILE_ENV)}
        os.environ[SETTINGS_SNAPSHOT_ENV] = str(path)
        os.environ.pop(CONFIG_FILE_ENV, None)
        try:
            yield path
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


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
    options = uvicorn_options(settings)
    if isinstance(app, str) and args.workers > 1:
        # uvicorn.run's own supervisor, except that SIGTERM never waits behind queued
        # SIGHUP restarts (app.ops.supervisor).
        config = uvicorn.Config(
            app, args.host, args.port, factory=True, workers=args.workers, **options
        )
        Supervisor(config, sockets=[config.bind_socket()]).run()
        return 0
    uvicorn.run(app, host=args.host, port=args.port, factory=isinstance(app, str), **options)
    return 0


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Everything ``gateway serve`` tells uvicorn beside the app, host, port and workers."""
    return {
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.ops.graceful_shutdown_seconds,
        # uvloop + httptools: the fastest loop and HTTP parser uvicorn has (both come
        # with uvicorn[standard]); named, not "auto", so a missing one fails loudly at
        # start. The httptools protocol is ours: with a header-read timeout
        # (server_options).
        "loop": "uvloop",
        # No WebSocket route exists; with a WebSocket implementation loaded, an upgrade
        # request skipped the edge (its scope is not "http": no path normalisation, a
        # plain-text 403). Without one, uvicorn serves it as the plain request it also is.
        "ws": "none",
        # A worker answers the supervisor's health ping only once it has imported the
        # gateway; uvicorn's 5 s default killed and respawned workers in a loop on a
        # loaded host. 30 s still finds a hung worker.
        "timeout_worker_healthcheck": 30,
        **server_options(settings),
    }


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
