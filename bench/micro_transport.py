"""Pass-through throughput: our downstream client against an aiohttp proxy, in one run.

Starts one upstream stub (a minimal asyncio HTTP/1.1 responder), then one
FastAPI pass-through proxy per variant, each in its own process under uvicorn,
and drives each in turn from a separate load-generator process (aiohttp,
``CONNECTIONS`` keep-alive connections, ``SECONDS`` seconds after a warm-up).
Variants are run in interleaved rounds and the best round of each is kept, so a
noisy neighbour hurts every variant alike. The figure that matters is the ratio
of our bare client (httpx API over ``AiohttpTransport``) to the aiohttp proxy.

    .venv/bin/python bench/micro_transport.py [--seconds 5] [--rounds 2]

``main()`` prints a markdown table and returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from typing import Any

CONNECTIONS = 32
PAYLOAD = b'{"id":"F-0001","title":"SQL injection in login form","severity":"critical"}'
VARIANTS = ("aiohttp", "ours_bare", "ours_full", "httpx_stock")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- upstream stub --------------------------------------------------------------------------


class _Responder(asyncio.Protocol):
    """Answers every request head with the same small JSON body (keep-alive, no body in)."""

    RESPONSE = (
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(PAYLOAD)).encode()
        + b"\r\n\r\n"
        + PAYLOAD
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        count = self.buffer.count(b"\r\n\r\n")
        if count:
            self.buffer = self.buffer[self.buffer.rfind(b"\r\n\r\n") + 4 :]
            self.transport.write(self.RESPONSE * count)


async def _serve_stub(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Responder, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- proxies --------------------------------------------------------------------------------


def _proxy_app(variant: str, upstream: str) -> Any:
    """A minimal FastAPI pass-through whose only difference is the client it uses."""
    from contextlib import asynccontextmanager

    import aiohttp
    import httpx
    from fastapi import FastAPI, Response

    from app.core.config import ServiceSettings
    from app.orchestration.client import DownstreamClient
    from app.orchestration.transport import AiohttpTransport

    clients: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if variant == "aiohttp":
            clients["c"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        elif variant == "ours_bare":
            transport = AiohttpTransport(max_connections=100)
            clients["c"] = httpx.AsyncClient(base_url=upstream, transport=transport)
        elif variant == "ours_full":
            clients["c"] = DownstreamClient("bench", ServiceSettings(url=upstream))  # type: ignore[arg-type]
        else:
            limits = httpx.Limits(max_connections=100)
            clients["c"] = httpx.AsyncClient(base_url=upstream, limits=limits)
        yield
        await clients["c"].close() if variant == "aiohttp" else await clients["c"].aclose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/proxy")
    async def proxy() -> Response:
        client = clients["c"]
        if variant == "aiohttp":
            async with client.get(upstream + "/item") as answer:
                body = await answer.read()
                return Response(body, answer.status, media_type="application/json")
        if variant == "ours_full":
            result = await client.call("GET", "/item")
        else:
            result = await client.get("/item")
        return Response(result.content, result.status_code, media_type="application/json")

    return app


def _serve_proxy(variant: str, port: int, upstream: str) -> None:
    import uvicorn

    uvicorn.run(
        _proxy_app(variant, upstream),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


# --- load generator -------------------------------------------------------------------------


async def _load(url: str, seconds: float, warmup: float) -> dict[str, float]:
    import aiohttp

    done = errors = 0
    measuring = False
    stop_at = time.monotonic() + warmup + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        while time.monotonic() < stop_at:
            try:
                async with session.get(url) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            if measuring:
                done += ok
                errors += not ok

    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        workers = [asyncio.create_task(worker(session)) for _ in range(CONNECTIONS)]
        await asyncio.sleep(warmup)
        measuring, started = True, time.monotonic()
        await asyncio.gather(*workers)
        elapsed = time.monotonic() - started
    return {"rps": done / elapsed, "errors": errors}


# --- orchestration of the run ---------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args])


def _wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def _drive(port: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--role", "load", "--port", str(port), "--seconds", str(seconds)],
        capture_output=True,
        check=True,
        timeout=seconds + 60,
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def run(seconds: float = 5.0, rounds: int = 2) -> dict[str, Any]:
    """Start the stub and the proxies, measure every variant ``rounds`` times, stop all."""
    stub_port = free_port()
    processes = [_spawn("--role", "stub", "--port", str(stub_port))]
    ports = {variant: free_port() for variant in VARIANTS}
    try:
        _wait_listening(stub_port)
        upstream = f"http://127.0.0.1:{stub_port}"
        for variant, port in ports.items():
            processes.append(
                _spawn("--role", variant, "--port", str(port), "--upstream", upstream)
            )
            _wait_listening(port)
        best: dict[str, dict[str, float]] = {}
        for _ in range(rounds):
            for variant, port in ports.items():
                result = _drive(port, seconds)
                if result["rps"] > best.get(variant, {"rps": -1.0})["rps"]:
                    best[variant] = result
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
    baseline = best["aiohttp"]["rps"]
    return {
        variant: {**figures, "ratio": figures["rps"] / baseline} for variant, figures in best.items()
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        f"| variant ({CONNECTIONS} connections) | req/s | errors | ratio to aiohttp |",
        "|---|---:|---:|---:|",
    ]
    for variant, figures in results.items():
        lines.append(
            f"| {variant} | {figures['rps']:.0f} | {figures['errors']:.0f} | "
            f"{figures['ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="main", choices=("main", "stub", "load", *VARIANTS))
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.role == "stub":
        asyncio.run(_serve_stub(args.port))
        return {}
    if args.role == "load":
        url = f"http://127.0.0.1:{args.port}/proxy"
        print(json.dumps(asyncio.run(_load(url, args.seconds, warmup=1.0))))
        return {}
    if args.role in VARIANTS:
        _serve_proxy(args.role, args.port, args.upstream)
        return {}
    results = run(args.seconds, args.rounds)
    print(render(results))
    return results


if __name__ == "__main__":
    main()
