"""The shipped nginx signer (deploy/nginx) in front of real servers on loopback.

``NginxSite`` writes the key file and an htpasswd into a temporary directory,
renders the shipped files there (ports and paths only) and starts nginx.
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
PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "dana": "dana-pw", "erin": "erin-pw"}


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
    """nginx running the shipped files; ``proxy_port`` / ``authorizer_port`` when served."""

    workdir: Path
    gateway_port: int
    application_port: int | None = None
    http_overrides: dict[str, str] = field(default_factory=dict)
    proxy_port: int = field(default_factory=free_port)
    authorizer_port: int = field(default_factory=free_port)
    server: NginxServer | None = None

    def start(self) -> NginxSite:
        for name in ("authz-signer.js", "authz-sign-proxy.conf", "authz-sign-decision.conf"):
            copy_shipped(name, self.workdir)
        includes = [
            render_shipped("authz-signer-http.conf", self.workdir, self.http_overrides),
            render_shipped(
                "gateway-upstream.conf",
                self.workdir,
                {"server 127.0.0.1:8000;": f"server 127.0.0.1:{self.gateway_port};"},
            ),
            render_shipped(
                "gateway-proxy.conf",
                self.workdir,
                {"listen 8080;": f"listen 127.0.0.1:{self.proxy_port};"},
            ),
        ]
        ports = [self.proxy_port]
        if self.application_port is not None:
            includes.append(
                render_shipped(
                    "gateway-authorizer.conf",
                    self.workdir,
                    {
                        "listen 8081;": f"listen 127.0.0.1:{self.authorizer_port};",
                        "server 127.0.0.1:9000;": f"server 127.0.0.1:{self.application_port};",
                    },
                )
            )
            ports.append(self.authorizer_port)
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
