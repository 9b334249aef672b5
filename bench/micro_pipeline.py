"""Micro-benchmark: the gateway's own CPU per request, in process, by pipeline stage.

The whole ASGI app (edge, gate, FastAPI, the route, the downstream client and its
resilience, logging to a file, metrics) is driven directly, without sockets, on
the typed findings route and on a pass-through route, with a 10k-line policy and
freshly signed requests. The downstream service is an in-memory transport that
answers the bench stub's findings body, so what is measured is the gateway's own
work. The baseline, in the same run, is a bare FastAPI app with one route that
returns the same body through an ``httpx.AsyncClient`` on the same transport:
the floor any FastAPI proxy pays. Then a ``cProfile`` of the gateway attributes
its time to stages (by the module of the innermost frame that names one), which
is the per-stage table committed with the results.

    .venv/bin/python -m bench.micro_pipeline [--requests 3000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Response

from bench.fast_stub import findings_body
from bench.policygen import load_callers, write_policy
from bench.targets import BENCH_KEY_ENV, BENCH_KEY_ID, BENCH_SECRET

LINES = 10_000
TYPED = "/v1/engagements/{engagement}/findings"
PASSTHROUGH = "/v1/engagements/{engagement}/reports/R-0001/content"
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

# (stage, needles in the frame's file path); the first stage a frame names wins.
STAGES = (
    ("authn (signature, digest, nonce)", ("app/authn", "http_sf")),
    ("authz (decision)", ("app/authz", "casbin")),
    ("rate limit", ("app/ops/ratelimit",)),
    ("gate glue (app/api/pipeline)", ("app/api/pipeline",)),
    ("downstream client + workflow", ("app/downstream", "app/workflows", "httpx", "tenacity")),
    ("logging (structlog, JSON)", ("structlog", "logging/__init__", "orjson", "app/core/logging")),
    ("metrics (prometheus)", ("prometheus_client", "app/ops/metrics")),
    ("edge", ("app/edge",)),
    ("routes (app/api)", ("app/api",)),
    ("FastAPI / Starlette / pydantic", ("fastapi", "starlette", "pydantic")),
    ("event loop", ("asyncio", "selectors")),
)


def canned_transport() -> httpx.MockTransport:
    bodies: dict[str, bytes] = {}

    def answer(request: httpx.Request) -> httpx.Response:
        engagement = request.url.path.split("/")[2]
        body = bodies.get(engagement) or bodies.setdefault(engagement, findings_body(engagement))
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})

    return httpx.MockTransport(answer)


def gateway_app(root: Path) -> FastAPI:
    from app.core.config import Settings
    from app.core.logging import configure_logging
    from app.main import create_app

    os.environ[BENCH_KEY_ENV] = BENCH_SECRET.decode()
    settings = Settings(
        signing={"keys": [{"id": BENCH_KEY_ID, "secret_env": BENCH_KEY_ENV}]},
        policy={"dir": str(write_policy(root / "policy", LINES)), "watch_interval": 0},
        services={"findings": {"url": "http://findings.internal"}},
        orchestration={
            "passthrough": [
                {
                    "path": "/v1/engagements/{engagement_id}/reports/{report_id}/content",
                    "service": "findings",
                    "upstream_path": "/engagements/{engagement_id}/findings",
                }
            ]
        },
        log={"level": "INFO", "format": "json"},
    )
    configure_logging("INFO", "json")
    return create_app(settings, transport=canned_transport())


def bare_app() -> FastAPI:
    app = FastAPI()
    client = httpx.AsyncClient(transport=canned_transport(), base_url="http://findings.internal")

    @app.get("/v1/engagements/{engagement_id}/findings")
    async def proxy(engagement_id: str) -> Response:
        upstream = await client.get(f"/engagements/{engagement_id}/findings")
        return Response(upstream.content, upstream.status_code, media_type="application/json")

    return app


def signed_scope(path: str, subject: str) -> dict[str, Any]:
    from app.authn.base import Message
    from app.authn.signer import sign_headers

    headers = {"host": ["gateway.internal"], "x-auth-subject": [subject]}
    message = Message("GET", path, "", "http", "gateway.internal", headers)
    added = sign_headers(message, b"", key_id=BENCH_KEY_ID, secret=BENCH_SECRET)
    raw = [(b"host", b"gateway.internal"), (b"x-auth-subject", subject.encode())]
    raw += [(k.encode(), v.encode()) for k, v in added.items()]
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": raw,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def _one(app: ASGIApp, scope: dict[str, Any]) -> int:
    """One request, as uvicorn delivers it: the body once, then waits until the answer ends."""
    status = 0
    answered = asyncio.Event()
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if not received:
            received = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif not message.get("more_body", False):
            answered.set()

    await app(scope, receive, send)
    return status


async def drive(app: ASGIApp, scopes: list[dict[str, Any]], concurrency: int) -> float:
    """CPU seconds per request over ``scopes``, ``concurrency`` at a time."""
    statuses: Counter[int] = Counter()
    started = time.process_time()
    for i in range(0, len(scopes), concurrency):
        batch = scopes[i : i + concurrency]
        statuses.update(await asyncio.gather(*(_one(app, s) for s in batch)))
    spent = time.process_time() - started
    if set(statuses) != {200}:
        raise RuntimeError(f"unexpected statuses: {dict(statuses)}")
    return spent / len(scopes)


def _stage(filename: str) -> str:
    for stage, needles in STAGES:
        if any(n in filename for n in needles):
            return stage
    return "other (uvloop-free asyncio glue, builtins)"


def stage_table(stats: pstats.Stats) -> list[tuple[str, float]]:
    """Self time by stage, as fractions of the total."""
    by_stage: Counter[str] = Counter()
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]  # pstats keeps it untyped
    for (filename, _, _), (_, _, self_time, _, _) in raw.items():
        by_stage[_stage(filename)] += self_time
    total = sum(by_stage.values()) or 1.0
    return [(stage, t / total) for stage, t in by_stage.most_common()]


async def measure(requests: int, concurrency: int, root: Path) -> dict[str, Any]:
    gateway, bare = gateway_app(root), bare_app()
    subject, engagement = load_callers(LINES, 1)[0]
    figures: dict[str, list[float]] = {"bare": [], "typed": [], "passthrough": []}
    async with gateway.router.lifespan_context(gateway), bare.router.lifespan_context(bare):
        for _ in range(3):  # interleaved rounds: noise hits every row alike
            for name, app, template in (
                ("bare", bare, TYPED),
                ("typed", gateway, TYPED),
                ("passthrough", gateway, PASSTHROUGH),
            ):
                path = template.format(engagement=engagement)
                scopes = [signed_scope(path, subject) for _ in range(requests)]
                figures[name].append(await drive(app, scopes, concurrency) * 1e6)
        profiler = cProfile.Profile()
        path = TYPED.format(engagement=engagement)
        scopes = [signed_scope(path, subject) for _ in range(requests)]
        profiler.enable()
        await drive(gateway, scopes, concurrency)
        profiler.disable()
    medians = {k: statistics.median(v) for k, v in figures.items()}
    return {
        "cpu_us": medians,
        "ratio_typed": medians["bare"] / medians["typed"],
        "ratio_passthrough": medians["bare"] / medians["passthrough"],
        "stages": stage_table(pstats.Stats(profiler)),
    }


def report(result: dict[str, Any]) -> str:
    cpu = result["cpu_us"]
    lines = [
        "| row | CPU µs/request (in process) | bare FastAPI ÷ row |",
        "|---|---:|---:|",
        f"| bare FastAPI proxy route | {cpu['bare']:.0f} | 1.00 |",
        f"| gateway, typed findings route | {cpu['typed']:.0f} | {result['ratio_typed']:.2f} |",
        f"| gateway, pass-through route | {cpu['passthrough']:.0f} | "
        f"{result['ratio_passthrough']:.2f} |",
        "",
        "Gateway, typed route, self time by stage (cProfile; its overhead inflates small calls):",
        "",
        "| stage | share |",
        "|---|---:|",
        *(f"| {stage} | {share * 100:.1f}% |" for stage, share in result["stages"]),
    ]
    return "\n".join(lines)


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        log = Path(tmp) / "gateway.log"
        with log.open("wb") as sink:
            saved = os.dup(2)
            os.dup2(sink.fileno(), 2)  # the JSON logs (stderr) go to a file, as in the bench
            try:
                result = asyncio.run(measure(args.requests, args.concurrency, Path(tmp)))
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
    print(report(result))
    return result


if __name__ == "__main__":
    main()
