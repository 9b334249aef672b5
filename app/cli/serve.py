"""``gateway serve``: validate the configuration, then serve under uvicorn.

With ``--workers N`` (N > 1) uvicorn starts N processes that each build the app
from the environment (``app.main:create_app_from_env``); the configuration is
still checked here first, so a bad file stops start-up with one line. On SIGTERM
uvicorn stops accepting, lets in-flight requests finish for
``ops.graceful_shutdown_seconds``, then runs the lifespan shutdown (pools closed).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import uvicorn

from app.core.config import CONFIG_FILE_ENV, load_settings
from app.core.errors import ConfigError
from app.core.logging import configure_logging
from app.ops.processes import multiprocess_metrics_dir

APP_FACTORY = "app.main:create_app_from_env"


def register(commands: Any) -> None:
    parser = commands.add_parser("serve", help="run the gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
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
    with multiprocess_metrics_dir(args.workers):
        return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from app.main import create_app  # imported late: settings and metrics dir first

    try:
        settings = load_settings()
        configure_logging(settings.log.level, settings.log.format)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc.detail}", file=sys.stderr)
        return 2
    options: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.ops.graceful_shutdown_seconds,
    }
    if args.workers == 1:
        uvicorn.run(app, **options)
    else:
        uvicorn.run(APP_FACTORY, factory=True, workers=args.workers, **options)
    return 0
