"""A real nginx with njs running the shipped deploy/nginx configuration, for tests.

The shipped files are copied unchanged apart from ports and paths: ``render_shipped``
replaces an explicit list of strings and fails if one of them is no longer in the
file (the shipped config drifted from what the tests exercise). Under ``CI=true`` a
missing nginx or njs module is a failure, never a skip: ``make test`` installs them
(scripts/ensure-packages.sh).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "deploy"
JS_MODULE = Path("/usr/lib/nginx/modules/ngx_http_js_module.so")
SHIPPED_DIR = "/etc/nginx/authz-gateway/"


def nginx_binary() -> str:
    binary = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if binary is None or not JS_MODULE.exists():
        if os.environ.get("CI") == "true":
            pytest.fail("nginx or its njs module is missing; make test installs them")
        pytest.skip("nginx-light and libnginx-mod-http-js are not installed (make test does it)")
    return binary


def render_shipped(name: str, target: Path, replacements: Mapping[str, str]) -> Path:
    """Copy deploy/``name`` into ``target``, its directory, ports and paths replaced."""
    text = (SHIPPED / name).read_text().replace(SHIPPED_DIR, f"{target}/")
    for old, new in replacements.items():
        assert old in text, f"deploy/{name} no longer contains {old!r}"
        text = text.replace(old, new)
    out = target / Path(name).name
    out.write_text(text)
    return out


def copy_shipped(name: str, target: Path) -> Path:
    """Copy deploy/``name`` into ``target`` byte for byte."""
    out = target / Path(name).name
    shutil.copyfile(SHIPPED / name, out)
    return out


class NginxServer:
    """One nginx master process on loopback, with the given http {} includes."""

    def __init__(self, workdir: Path, includes: list[Path], ports: list[int]) -> None:
        self.workdir = workdir
        self.ports = ports
        self.proc: subprocess.Popen[bytes] | None = None
        temp = {k: workdir / k for k in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir(exist_ok=True)
        lines = [
            f"load_module {JS_MODULE};",
            "daemon off;",
            # As root, nginx's workers would run as nobody, who cannot read pytest's
            # private temporary directories; otherwise they run as the test's user.
            *(["user root;"] if os.geteuid() == 0 else []),
            "worker_processes 1;",
            f"pid {workdir}/nginx.pid;",
            f"error_log {workdir}/error.log info;",
            "events { worker_connections 256; }",
            "http {",
            "  access_log off;",
            f"  client_body_temp_path {temp['body']};",
            f"  proxy_temp_path {temp['proxy']};",
            f"  fastcgi_temp_path {temp['fastcgi']};",
            f"  uwsgi_temp_path {temp['uwsgi']};",
            f"  scgi_temp_path {temp['scgi']};",
            *(f"  include {path};" for path in includes),
            "}",
        ]
        self.conf = workdir / "nginx.conf"
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self) -> NginxServer:
        binary = nginx_binary()
        argv = [binary, "-p", str(self.workdir), "-c", str(self.conf)]
        check = subprocess.run([*argv, "-t"], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode()
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        for port in self.ports:
            while not _accepts(port):
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"nginx did not start: {self.error_log()[-2000:]}")
                time.sleep(0.05)
        return self

    def error_log(self) -> str:
        path = self.workdir / "error.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False
