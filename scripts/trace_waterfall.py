"""Draw the example trace of operations.md: one close saga, exported for real, as a waterfall.

Starts the three stub services and ``gateway serve`` as processes (tracing on,
OTLP/HTTP to a receiver in this process, all on 127.0.0.1), makes the engagements
service fail the
``close`` step with 503s, sends one signed ``POST .../close``, takes the trace
the receiver decoded, prints its span tree and draws it with matplotlib (the
``bench`` extra). Usage:

    .venv/bin/python scripts/trace_waterfall.py --out app/api/docs/images/trace-close-saga.png

Keys: the documented demo key (``GATEWAY_DEMO_KEY``), never a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app.authn.signer import HttpSignatureAuth  # noqa: E402 (after the path set-up)
from app.stubs.otlp import OtlpReceiver, ReceivedSpan  # noqa: E402
from app.stubs.server import STUB_NAMES  # noqa: E402

DEMO_KEY_ENV = "GATEWAY_DEMO_KEY"
DEMO_KEY = "demo-key-not-secret-0123456789abcdef"  # documented demo value
CLOSE = "/v1/engagements/acme-2026/close"
COLOURS = {"SERVER": "#4c72b0", "INTERNAL": "#8c8c8c", "CLIENT": "#55a868"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(*argv: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """One ``gateway`` command as its own process, quiet."""
    return subprocess.Popen(  # noqa: S603 (our own CLI, fixed argv)
        [sys.executable, "-m", "app.cli.main", *argv],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait_ready(url: str) -> None:
    for _ in range(300):
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up")


def record(receiver: OtlpReceiver, workdir: Path) -> list[ReceivedSpan]:
    """Run one failing close through a traced ``gateway serve``; the spans of its trace."""
    urls = {name: f"http://127.0.0.1:{free_port()}" for name in STUB_NAMES}
    procs = [spawn("stub", "--name", n, "--port", u.rsplit(":", 1)[1]) for n, u in urls.items()]
    retry = {"attempts": 3, "backoff_initial_seconds": 0.01, "backoff_max_seconds": 0.02}
    config = workdir / "gateway.json"
    config.write_text(
        json.dumps(
            {
                "signing": {"keys": [{"id": "demo-2026", "secret_env": DEMO_KEY_ENV}]},
                "policy": {"dir": str(REPO / "policies")},
                "services": {name: {"url": url, "retry": retry} for name, url in urls.items()},
                "log": {"format": "json", "level": "WARNING"},
                "tracing": {"enabled": True, "endpoint": receiver.endpoint, "sample_ratio": 1.0},
            }
        )
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    procs.append(spawn("serve", "--port", str(port), "--config", str(config)))
    try:
        for url in [*urls.values()]:
            wait_ready(url + "/_health")
        wait_ready(base + "/healthz")
        return _close_once(base, urls["engagements"], receiver)
    finally:
        for proc in reversed(procs):  # the gateway first: its shutdown exports what is queued
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)


def _close_once(base: str, engagements: str, receiver: OtlpReceiver) -> list[ReceivedSpan]:
    faults = {"error_rate": 1.0, "error_status": 503, "path_prefix": CLOSE[3:]}
    httpx.post(engagements + "/_faults", json=faults).raise_for_status()
    auth = HttpSignatureAuth("demo-2026", DEMO_KEY.encode(), subject="bob")
    with httpx.Client(base_url=base, auth=auth, timeout=15) as client:
        for _ in range(3):  # a warm gateway, not its first-call set-up, is what to show
            client.get("/v1/engagements/acme-2026/overview")
        key = {"idempotency-key": "waterfall-0001"}
        answer = client.post(CLOSE, json={"reason": "Retest complete."}, headers=key)
    print(f"POST {CLOSE} -> {answer.status_code}")
    for _ in range(200):
        server = [s for s in receiver.spans if s.kind == "SERVER" and s.name.startswith("POST")]
        if server:
            return receiver.trace(server[-1].trace_id)
        time.sleep(0.05)
    raise SystemExit("no server span arrived at the receiver")


def ordered(spans: list[ReceivedSpan]) -> list[tuple[int, ReceivedSpan]]:
    """Depth-first, siblings by start time: (depth, span)."""
    ids = {s.span_id for s in spans}
    out: list[tuple[int, ReceivedSpan]] = []

    def parent_of(span: ReceivedSpan) -> str | None:
        return span.parent_span_id if span.parent_span_id in ids else None

    def walk(parent: str | None, depth: int) -> None:
        kids = [s for s in spans if parent_of(s) == parent]
        for span in sorted(kids, key=lambda s: s.start_ns):
            out.append((depth, span))
            walk(span.span_id, depth + 1)

    walk(None, 0)
    return out


def label(span: ReceivedSpan) -> str:
    extra = span.attributes.get("error.type")
    resend = span.attributes.get("http.request.resend_count")
    text = span.name
    if resend:
        text += f" (retry {resend})"
    if extra:
        text += f"  [{extra}]"
    return text


def draw(rows: list[tuple[int, ReceivedSpan]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = min(span.start_ns for _, span in rows)
    fig, ax = plt.subplots(figsize=(12, 0.36 * len(rows) + 1.6))
    for index, (_, span) in enumerate(rows):
        left = (span.start_ns - start) / 1e6
        width = max((span.end_ns - span.start_ns) / 1e6, 0.05)
        failed = span.status == "ERROR"
        ax.barh(
            index,
            width,
            left=left,
            color=COLOURS.get(span.kind, "#8c8c8c"),
            edgecolor="#c44e52" if failed else "none",
            linewidth=2 if failed else 0,
            height=0.6,
        )
        ax.text(left + width + 0.3, index, f"{width:.1f} ms", va="center", fontsize=7)
    names = ["   " * depth + label(span) for depth, span in rows]
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names, fontsize=8, ha="left", family="monospace")
    ax.tick_params(axis="y", pad=5.2 * max(len(n) for n in names), length=0)
    ax.invert_yaxis()
    ax.set_xlabel("milliseconds since the request started")
    trace_id = rows[0][1].trace_id
    ax.set_title(f"POST /v1/engagements/{{engagement_id}}/close, trace {trace_id}", fontsize=9)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in COLOURS.values()]
    kinds = [k.lower() for k in COLOURS]
    handles.append(plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="#c44e52"))
    kinds.append("error status")
    ax.legend(handles, kinds, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=4, fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = REPO / "app/api/docs/images/trace-close-saga.png"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()
    os.environ.setdefault(DEMO_KEY_ENV, DEMO_KEY)
    receiver = OtlpReceiver().start()
    try:
        with tempfile.TemporaryDirectory(prefix="waterfall-") as workdir:
            rows = ordered(record(receiver, Path(workdir)))
    finally:
        receiver.stop()
    for depth, span in rows:
        took = (span.end_ns - span.start_ns) / 1e6
        print(f"{'  ' * depth}{label(span)}  {took:.1f} ms")
    draw(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
