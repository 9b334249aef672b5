"""``gateway stub``: run one stub downstream service, with faults if asked."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Any

from pydantic import ValidationError

from app.authn.keys import load_keyring
from app.cli.ports import tcp_port
from app.core.config import KeySpec
from app.core.errors import ConfigError
from app.core.logging import configure_logging
from app.stubs.faults import FaultConfig
from app.stubs.limits import DEFAULT_MAX_BODY_BYTES
from app.stubs.server import STUB_NAMES, create_stub_app, stub_server


def register(commands: Any) -> None:
    parser = commands.add_parser("stub", help="run a stub downstream service")
    parser.add_argument("--name", required=True, choices=STUB_NAMES)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=tcp_port, required=True)
    parser.add_argument("--seed", type=int, default=7, help="seed of the demo data and fault dice")
    parser.add_argument(
        "--max-body-bytes",
        type=int,
        default=DEFAULT_MAX_BODY_BYTES,
        help="refuse a larger request body with 413 (default 32 MiB)",
    )
    faults = parser.add_argument_group("faults (also PATCH /_faults to merge, POST to replace)")
    faults.add_argument("--latency-ms", type=int, default=0)
    faults.add_argument("--error-rate", type=float, default=0.0, help="0..1, seeded")
    faults.add_argument("--error-status", type=int, default=500)
    faults.add_argument("--fail-next", type=int, default=0, help="fail the next N arrivals")
    faults.add_argument("--fail-status", type=int, default=503)
    faults.add_argument("--retry-after", type=int, default=None, help="seconds, on any failure")
    faults.add_argument(
        "--hang", action="store_true", help="hold each request until the faults change (30 s)"
    )
    faults.add_argument("--reset", action="store_true", help="drop the connection mid-response")
    faults.add_argument("--slow-body-ms", type=int, default=0, help="pause per 1 KiB of body")
    verify = parser.add_argument_group("verify the gateway's outbound signature")
    verify.add_argument("--verify-key-id", help="the gateway's key id for this service")
    verify.add_argument("--verify-key-env", help="environment variable holding its secret")
    verify.add_argument("--require-signature", action="store_true")
    parser.set_defaults(handler=run)


def fault_config(args: argparse.Namespace) -> FaultConfig:
    return FaultConfig(
        latency_ms=args.latency_ms,
        error_rate=args.error_rate,
        error_status=args.error_status,
        fail_next=args.fail_next,
        fail_status=args.fail_status,
        retry_after=args.retry_after,
        hang=args.hang,
        reset=args.reset,
        slow_body_ms=args.slow_body_ms,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    if bool(args.verify_key_id) != bool(args.verify_key_env):
        return _usage("--verify-key-id and --verify-key-env go together")
    if args.max_body_bytes < 0:
        return _usage("--max-body-bytes: must be 0 or more")
    if args.require_signature and not args.verify_key_id:
        # Without a key nothing could be verified: the flag was silently ignored.
        return _usage("--require-signature needs --verify-key-id and --verify-key-env")
    keyring = None
    try:
        faults = fault_config(args)
        if args.verify_key_id:
            spec = KeySpec(id=args.verify_key_id, secret_env=args.verify_key_env)
            keyring = load_keyring([spec])
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + "-".join(str(part) for part in first["loc"]).replace("_", "-")
        return _usage(f"{flag}: {first['msg']}")
    except ConfigError as exc:  # "signing.keys[0] (id=...): why": name the flag instead
        return _usage("--verify-key-env: " + exc.detail.partition(": ")[2])
    configure_logging()  # once the flags are valid: a refusal changes no process state
    app = create_stub_app(
        args.name,
        seed=args.seed,
        faults=faults,
        keyring=keyring,
        require_signature=args.require_signature,
        max_body_bytes=args.max_body_bytes,
    )
    server = stub_server(app, host=args.host, port=args.port)  # the options, declared once
    # Ctrl-C: uvicorn stops, then raises the signal again (uvicorn.run swallows it too).
    with contextlib.suppress(KeyboardInterrupt):
        server.run()  # a port it cannot listen on: uvicorn's error line and exit code 3
    return 0


def _usage(message: str) -> int:
    """One line on stderr and exit code 2, as every other command's bad input."""
    print(f"gateway stub: {message}", file=sys.stderr)
    return 2
