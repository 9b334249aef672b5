"""``gateway demo``: the stub services and the gateway on loopback, for ``make run``."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from app.authn.identity import SUBJECT_HEADER
from app.authn.signer import message_from_httpx, sign_headers
from app.cli.sign import DEMO_KEY_ENV, as_curl

DEMO_KEY_ID = "demo-2026"
# The key the demo gateway signs outbound identity with; the stubs require it.
OUTBOUND_KEY_ID = "gateway-demo"
OUTBOUND_KEY_ENV = "GATEWAY_DEMO_OUTBOUND_KEY"

DEMO_STUBS = {"engagements": 9101, "findings": 9102, "reports": 9103}
DEMO_CONFIG = Path("config/demo.yaml")


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="run the gateway with demo stub services")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG)
    parser.set_defaults(handler=run)


def _spawn(*argv: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "app.cli.main", *argv])  # noqa: S603 - fixed argv


def _wait_ready(url: str, deadline_s: float = 15.0) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=0.5).status_code < 500:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return False


def _presigned(url: str) -> str:
    """A ready curl command signed now with the demo key (single use: it has a nonce)."""
    secret = os.environ[DEMO_KEY_ENV].encode("utf-8")
    request = httpx.Request("GET", url, headers={SUBJECT_HEADER: "alice"})
    request.headers.update(
        sign_headers(message_from_httpx(request), b"", key_id=DEMO_KEY_ID, secret=secret)
    )
    return as_curl(request)


def _example(port: int) -> str:
    base = f"http://127.0.0.1:{port}/v1/engagements"
    sign = f"{Path(sys.executable).parent / 'gateway'} sign --subject alice"
    return (
        f"\nGateway ready on http://127.0.0.1:{port} (Ctrl-C stops everything).\n"
        "A signed request, ready to paste (single use, valid for 5 minutes):\n\n"
        f"  {_presigned(base + '/acme-2026/findings')}\n\n"
        "The same, freshly signed each time (pipe to sh to send it):\n\n"
        f"  {sign} {base}/acme-2026/findings | sh\n\n"
        "Unsigned, the same request is refused (401):\n\n"
        f"  curl -i {base}/acme-2026/findings\n\n"
        "A foreign engagement is forbidden (403):\n\n"
        f"  {sign} {base}/initech-redteam/findings | sh\n"
    )


def run(args: argparse.Namespace) -> int:
    for env in (DEMO_KEY_ENV, OUTBOUND_KEY_ENV):
        if not os.environ.get(env):
            print(f"gateway demo: set {env} (the Makefile sets the demo keys)", file=sys.stderr)
            return 2
    verify = ("--verify-key-id", OUTBOUND_KEY_ID, "--verify-key-env", OUTBOUND_KEY_ENV)
    procs = [
        _spawn("stub", "--name", name, "--port", str(port), *verify, "--require-signature")
        for name, port in DEMO_STUBS.items()
    ]
    procs.append(_spawn("serve", "--port", str(args.port), "--config", str(args.config)))
    try:
        if not _wait_ready(f"http://127.0.0.1:{args.port}/readyz"):
            print("gateway demo: the gateway did not become ready", file=sys.stderr)
            return 1
        print(_example(args.port), flush=True)
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
