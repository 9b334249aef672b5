"""``gateway serve``: validate the configuration, then serve under uvicorn."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import uvicorn

from app.core.config import CONFIG_FILE_ENV, load_settings
from app.core.errors import ConfigError
from app.core.logging import configure_logging


def register(commands: Any) -> None:
    parser = commands.add_parser("serve", help="run the gateway")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--config", help=f"YAML settings file (else ${CONFIG_FILE_ENV})")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.config:
        os.environ[CONFIG_FILE_ENV] = args.config
    from app.main import create_app  # imported late: settings must be in place first

    try:
        settings = load_settings()
        configure_logging(settings.log.level, settings.log.format)
        app = create_app(settings)
    except ConfigError as exc:
        print(f"gateway: configuration error: {exc.detail}", file=sys.stderr)
        return 2
    # uvloop + httptools: the fastest loop and HTTP parser uvicorn has (both come with
    # uvicorn[standard]); named, not "auto", so a missing one fails loudly at start.
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http="httptools",
    )
    return 0
