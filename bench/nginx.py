"""nginx as the native reverse-proxy reference, in front of the same stub.

Installed from the Debian package when missing (``nginx-light``, else ``nginx``),
run unprivileged-style from a generated config in a temp dir: one worker process
(the gateway row has one worker too), upstream keep-alive, no access log.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.procs import Server

CONFIG = """\
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    upstream stub {{ server 127.0.0.1:{upstream_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://stub;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
}}
"""


def nginx_binary() -> str | None:
    found = shutil.which("nginx") or "/usr/sbin/nginx"
    return found if os.access(found, os.X_OK) else None


def ensure_nginx(install: bool) -> str:
    """The nginx binary, installing the Debian package if allowed; RuntimeError if none."""
    binary = nginx_binary()
    if binary or not install:
        if binary:
            return binary
        raise RuntimeError("nginx is not installed (installation not attempted)")
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError("nginx is missing and apt-get as root is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for package in ("nginx-light", "nginx"):
        done = subprocess.run(
            [apt, "install", "-y", "--no-install-recommends", package],
            env=env,
            capture_output=True,
            timeout=300,
            check=False,
        )
        if done.returncode == 0 and (binary := nginx_binary()):
            return binary
    raise RuntimeError("apt-get could not install nginx-light or nginx")


def nginx_version(binary: str) -> str:
    done = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return done.stderr.strip().removeprefix("nginx version: ")


def nginx_server(binary: str, root: Path, port: int, upstream_port: int) -> Server:
    root.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(CONFIG.format(root=root, port=port, upstream_port=upstream_port))
    argv = [binary, "-p", str(root), "-c", str(conf), "-e", str(root / "error.log")]
    return Server("nginx", port, argv)
