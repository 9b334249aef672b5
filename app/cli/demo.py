"""``gateway demo``: the stub services and the gateway on loopback, for ``make run``.

Every port is checked before anything starts: a busy one stops the demo with a
message naming it and the options that choose others, instead of a banner over
servers that died with "address already in use".
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

from app.authn.identity import SUBJECT_HEADER
from app.authn.signer import message_from_httpx, sign_headers
from app.cli.sign import DEMO_KEY, DEMO_KEY_ENV, as_curl

DEMO_KEY_ID = "demo-2026"
# The key the demo gateway signs outbound identity with; the stubs require it.
OUTBOUND_KEY_ID = "gateway-demo"
OUTBOUND_KEY_ENV = "GATEWAY_DEMO_OUTBOUND_KEY"

HOST = "127.0.0.1"
STUB_NAMES = ("engagements", "findings", "reports")  # on --stub-port and the next two
DEMO_CONFIG = Path("config/demo.yaml")
READY_SECONDS = 60.0  # a bound for a loaded machine; ready is usually 2-3 s


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65_533:
        raise argparse.ArgumentTypeError(f"{text} is not a port from 1 to 65533")
    return port


def register(commands: Any) -> None:
    parser = commands.add_parser("demo", help="run the gateway with demo stub services")
    parser.add_argument("--port", type=_port, default=8000, help="the gateway's port (8000)")
    parser.add_argument(
        "--stub-port",
        type=_port,
        default=9101,
        help="the engagements stub's port; findings and reports take the next two (9101)",
    )
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG)
    parser.set_defaults(handler=run)


@dataclass(frozen=True, slots=True)
class DemoPorts:
    """The gateway's port and the three stubs' (consecutive) ports."""

    gateway: int
    first_stub: int

    @property
    def stubs(self) -> dict[str, int]:
        return {name: self.first_stub + n for n, name in enumerate(STUB_NAMES)}

    def roles(self) -> list[tuple[str, int]]:
        """(who, port) for every server the demo starts."""
        stubs = [(f"the {name} stub", port) for name, port in self.stubs.items()]
        return [("the gateway", self.gateway), *stubs]


def port_in_use(port: int) -> bool:
    """Whether binding ``HOST:port`` fails, as the servers' own bind would."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _free_run(start: int, count: int, avoid: set[int]) -> int | None:
    """The first port from ``start`` where ``count`` consecutive ports are free."""
    for first in range(start, min(start + 500, 65_534 - count)):
        run = range(first, first + count)
        if not avoid.intersection(run) and not any(port_in_use(p) for p in run):
            return first
    return None


def busy_message(ports: DemoPorts, busy: list[tuple[str, int]]) -> str:
    """Which ports are busy, and the command lines that choose free ones."""
    lines = [
        f"gateway demo: port {port} ({who}) is already in use on {HOST}." for who, port in busy
    ]
    lines.append("Stop what listens there (`ss -ltnp` shows it), or choose other ports:")
    stub_ports = set(ports.stubs.values())
    gateway = ports.gateway
    if any(port == gateway for _, port in busy):
        gateway = _free_run(gateway + 1, 1, stub_ports) or gateway + 1
    first_stub = ports.first_stub
    if any(port in stub_ports for _, port in busy):
        first_stub = _free_run(first_stub + 3, 3, {gateway}) or first_stub + 100
    options = f"--port {gateway} --stub-port {first_stub}"
    lines += [f'  make run DEMO_ARGS="{options}"', f"  gateway demo {options}"]
    return "\n".join(lines)


def _spawn(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "app.cli.main", *argv]
    return subprocess.Popen(command, env=env)  # noqa: S603 - argv built here, no shell


def _start(ports: DemoPorts, config: Path) -> dict[str, subprocess.Popen[bytes]]:
    """The three stubs and the gateway, the gateway pointed at the stubs' ports."""
    verify = ("--verify-key-id", OUTBOUND_KEY_ID, "--verify-key-env", OUTBOUND_KEY_ENV)
    procs = {
        f"the {name} stub": _spawn(
            "stub", "--name", name, "--port", str(port), *verify, "--require-signature"
        )
        for name, port in ports.stubs.items()
    }
    env = dict(os.environ)
    for name, port in ports.stubs.items():
        env[f"GATEWAY_SERVICES__{name.upper()}__URL"] = f"http://{HOST}:{port}"
    serve = ("serve", "--port", str(ports.gateway), "--config", str(config))
    procs["the gateway"] = _spawn(*serve, env=env)
    return procs


def _answers(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url).status_code < 500
    except httpx.TransportError:
        return False


def _wait_ready(ports: DemoPorts, procs: dict[str, subprocess.Popen[bytes]]) -> str | None:
    """``None`` once every server answers; else why not (one exited, or time ran out)."""
    urls = {f"the {name} stub": f"http://{HOST}:{p}/_health" for name, p in ports.stubs.items()}
    urls["the gateway"] = f"http://{HOST}:{ports.gateway}/readyz"
    end = time.monotonic() + READY_SECONDS
    waiting = dict(urls)
    with httpx.Client(timeout=2.0, trust_env=False) as client:  # loopback: never a proxy
        while waiting and time.monotonic() < end:
            if exited := _exited(procs):
                return exited
            waiting = {who: url for who, url in waiting.items() if not _answers(client, url)}
            if waiting:
                time.sleep(0.2)
    return _exited(procs) or (
        f"gateway demo: {', '.join(waiting)} did not become ready in {READY_SECONDS:.0f} s"
        if waiting
        else None
    )


def _exited(procs: dict[str, subprocess.Popen[bytes]]) -> str | None:
    for who, proc in procs.items():
        if (code := proc.poll()) is not None:
            return f"gateway demo: {who} exited (code {code}); its error is above"
    return None


def _presigned(url: str) -> str:
    """A ready curl command signed now with the demo key (single use: it has a nonce)."""
    secret = os.environ[DEMO_KEY_ENV].encode("utf-8")
    request = httpx.Request("GET", url, headers={SUBJECT_HEADER: "alice"})
    request.headers.update(
        sign_headers(message_from_httpx(request), b"", key_id=DEMO_KEY_ID, secret=secret)
    )
    return as_curl(request)


def _export_line() -> str:
    """The line that gives another shell the demo's key (the key itself only if public)."""
    if os.environ.get(DEMO_KEY_ENV) == DEMO_KEY:
        return f"export {DEMO_KEY_ENV}={DEMO_KEY}   # the documented demo key"
    return f"export {DEMO_KEY_ENV}='<the key you started the demo with>'"


def banner(ports: DemoPorts) -> str:
    """What ``make run`` prints once every server answers."""
    base = f"http://{HOST}:{ports.gateway}/v1/engagements"
    sign = f"{Path(sys.executable).parent / 'gateway'} sign --subject alice"
    stubs = ", ".join(f"{name} {port}" for name, port in ports.stubs.items())
    return (
        f"\nGateway ready on http://{HOST}:{ports.gateway} (Ctrl-C stops everything);"
        f" stub services on ports {stubs}.\n"
        "A signed request, ready to paste (single use, valid for 5 minutes):\n\n"
        f"  {_presigned(base + '/acme-2026/findings')}\n\n"
        "In another shell, set the key that `gateway sign` signs with:\n\n"
        f"  {_export_line()}\n\n"
        "then the same request, freshly signed each time (pipe to sh to send it):\n\n"
        f"  {sign} {base}/acme-2026/findings | sh\n\n"
        "Unsigned, the same request is refused (401):\n\n"
        f"  curl -i {base}/acme-2026/findings\n\n"
        "A foreign engagement is forbidden (403):\n\n"
        f"  {sign} {base}/initech-redteam/findings | sh\n\n"
        "Every example route (findings, overview, close, reports, evidence, admin):"
        " README.md, 'Example routes'.\n"
    )


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean stop as Ctrl-C: the servers are stopped


def _check_keys() -> bool:
    for env in (DEMO_KEY_ENV, OUTBOUND_KEY_ENV):
        if not os.environ.get(env):
            print(f"gateway demo: set {env} (the Makefile sets the demo keys)", file=sys.stderr)
            return False
    return True


def run(args: argparse.Namespace) -> int:
    if not _check_keys():
        return 2
    ports = DemoPorts(args.port, args.stub_port)
    if ports.gateway in ports.stubs.values():
        print("gateway demo: --port must differ from the three stub ports", file=sys.stderr)
        return 2
    if busy := [(who, port) for who, port in ports.roles() if port_in_use(port)]:
        print(busy_message(ports, busy), file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    procs = _start(ports, args.config)
    try:
        if failure := _wait_ready(ports, procs):
            print(failure, file=sys.stderr)
            return 1
        print(banner(ports), flush=True)
        while not (failure := _exited(procs)):
            time.sleep(0.5)
        print(failure, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(procs.values())


def _stop(procs: Any) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(timeout=10)
