"""Before measuring: show the security rows really check what they claim to.

For the gateway and the naive gateway: a signed request is answered 200, an
unsigned one is refused 401, a replay of one signed request (same nonce) is
refused by a gateway with a nonce store (the naive one has none), and a caller
the policy does not know is refused 403. The answers go into the results file,
so a fast figure can never come from a row that skipped its checks.
"""

from __future__ import annotations

import socket
from typing import Any

from app.authn.base import Message
from app.authn.signer import sign_headers
from bench.targets import BENCH_KEY_ID, BENCH_SECRET, Target


def _request(port: int, path: str, subject: str, signed: dict[str, str] | None) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"host: 127.0.0.1:{port}", f"x-auth-subject: {subject}"]
    lines += [f"{k}: {v}" for k, v in (signed or {}).items()]
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _status(port: int, raw: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(raw)
        head = sock.recv(64)
    parts = head.split(b" ", 2)
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _signed(port: int, path: str, subject: str) -> bytes:
    host = f"127.0.0.1:{port}"
    message = Message("GET", path, "", "http", host, {"x-auth-subject": [subject]})
    headers = sign_headers(message, b"", key_id=BENCH_KEY_ID, secret=BENCH_SECRET)
    return _request(port, path, subject, headers)


def check(target: Target) -> dict[str, Any]:
    """Status codes for signed, unsigned, replayed and unknown-caller requests."""
    assert target.server is not None
    port = target.server.port
    subject, engagement = target.callers[0]
    path = target.path_template.format(engagement=engagement)
    replayable = _signed(port, path, subject)
    return {
        "signed": _status(port, replayable),
        "replayed": _status(port, replayable),
        "unsigned": _status(port, _request(port, path, subject, None)),
        "unknown_caller": _status(port, _signed(port, path, "nobody-at-all")),
    }


def verdict(statuses: dict[str, Any]) -> str:
    """One line saying which checks the row enforced."""
    if "error" in statuses:
        return f"not checked: {statuses['error']}"
    expected = {"signed": 200, "unsigned": 401, "replayed": 401, "unknown_caller": 403}
    parts = []
    for case, want in expected.items():
        got = statuses.get(case)
        mark = "ok" if got == want else "NOT ENFORCED" if want != 200 else "FAILED"
        parts.append(f"{case} → {got} ({mark})")
    return "; ".join(parts)
