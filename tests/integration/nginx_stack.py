"""The shipped nginx signer (deploy/) in front of real servers on loopback.

``NginxSite`` writes the key file and an htpasswd into a temporary directory,
renders the shipped files there (ports and paths only, unless a test says
otherwise) and starts nginx with the server blocks it asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.conftest import free_port
from tests.nginx_server import NginxServer, copy_shipped, render_shipped

# Documented test key of the nginx signer tests: never configured outside them.
NGINX_KEY_ID = "proxy-2026b"
NGINX_SECRET = b"nginx-signer-test-secret-not-for-production-0123"
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "dana": "dana-pw", "bad user": "pw"}
SNIPPETS = (
    "authz-signer.js",
    "authz-sign-proxy.conf",
    "authz-sign-decision.conf",
    "authz-sign-forward-auth.conf",
)


def _htpasswd_line(user: str, password: str) -> str:
    # nginx's RFC 2307 {PLAIN} scheme: fine for throw-away test passwords only.
    return f"{user}:{{PLAIN}}{password}"


def nginx_key_spec(workdir: Path) -> dict[str, str]:
    """The gateway's key entry for the nginx signer, its secret in a file (written here)."""
    write_secrets(workdir)
    return {"id": NGINX_KEY_ID, "secret_file": str(workdir / f"{NGINX_KEY_ID}.key")}


def write_secrets(workdir: Path) -> None:
    (workdir / f"{NGINX_KEY_ID}.key").write_bytes(NGINX_SECRET + b"\n")
    lines = [_htpasswd_line(user, pw) for user, pw in PASSWORDS.items()]
    (workdir / "htpasswd").write_text("\n".join(lines) + "\n")


@dataclass
class NginxSite:
    """nginx running the shipped files.

    Always the signing proxy (``proxy_port``); with ``application_port`` also the
    auth_request server (``authorizer_port``); with ``sidecars`` the Traefik and
    Envoy signing sidecars (``traefik_port``, ``envoy_port``).
    """

    workdir: Path
    gateway_port: int
    application_port: int | None = None
    sidecars: bool = False
    http_overrides: dict[str, str] = field(default_factory=dict)
    proxy_port: int = field(default_factory=free_port)
    authorizer_port: int = field(default_factory=free_port)
    traefik_port: int = field(default_factory=free_port)
    envoy_port: int = field(default_factory=free_port)
    server: NginxServer | None = None

    def _blocks(self) -> list[tuple[str, dict[str, str], int]]:
        blocks = [("nginx/gateway-proxy.conf", {"listen 8080;": "listen {port};"}, self.proxy_port)]
        if self.application_port is not None:
            app = {"listen 8081;": "listen {port};", "server 127.0.0.1:9000;": "server {app};"}
            blocks.append(("nginx/gateway-authorizer.conf", app, self.authorizer_port))
        if self.sidecars:
            traefik = {"listen 127.0.0.1:8090;": "listen {port};"}
            blocks.append(("traefik/forward-auth-sidecar.conf", traefik, self.traefik_port))
            envoy = {"listen 127.0.0.1:8091;": "listen {port};"}
            blocks.append(("envoy/ext-authz-sidecar.conf", envoy, self.envoy_port))
        return blocks

    def start(self) -> NginxSite:
        for name in SNIPPETS:
            copy_shipped(f"nginx/{name}", self.workdir)
        upstream = {"server 127.0.0.1:8000;": f"server 127.0.0.1:{self.gateway_port};"}
        includes = [
            render_shipped("nginx/authz-signer-http.conf", self.workdir, self.http_overrides),
            render_shipped("nginx/gateway-upstream.conf", self.workdir, upstream),
        ]
        ports = []
        for name, replacements, port in self._blocks():
            values = {"port": f"127.0.0.1:{port}", "app": f"127.0.0.1:{self.application_port}"}
            filled = {old: new.format(**values) for old, new in replacements.items()}
            includes.append(render_shipped(name, self.workdir, filled))
            ports.append(port)
        self.server = NginxServer(self.workdir, includes, ports).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def error_log(self) -> str:
        return self.server.error_log() if self.server is not None else ""

    def client(self, user: str, *, authorizer: bool = False) -> httpx.Client:
        port = self.authorizer_port if authorizer else self.proxy_port
        return httpx.Client(
            base_url=f"http://127.0.0.1:{port}",
            auth=httpx.BasicAuth(user, PASSWORDS[user]),
            timeout=10,
        )
