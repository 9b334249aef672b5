"""``gateway stub``: run one stub downstream service."""

from __future__ import annotations

import argparse
from typing import Any

import uvicorn

from app.core.logging import configure_logging
from app.stubs.server import STUB_NAMES, create_stub_app


def register(commands: Any) -> None:
    parser = commands.add_parser("stub", help="run a stub downstream service")
    parser.add_argument("--name", required=True, choices=STUB_NAMES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--seed", type=int, default=7, help="seed of the demo data")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    configure_logging()
    app = create_stub_app(args.name, seed=args.seed)
    uvicorn.run(app, host=args.host, port=args.port, log_config=None, access_log=False)
    return 0
