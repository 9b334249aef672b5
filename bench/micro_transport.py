"""Pass-through throughput: our downstream client against an aiohttp proxy, in one run.

Starts one upstream stub (a minimal asyncio HTTP/1.1 responder), then one
FastAPI pass-through proxy per variant, each in its own process under uvicorn,
and drives each in turn from a separate load-generator process (aiohttp,
``CONNECTIONS`` keep-alive connections, ``SECONDS`` seconds after a warm-up).
Variants are run in interleaved rounds and the best round of each is kept, so a
noisy neighbour hurts every variant alike. The figures that matter (issue 5: at
least 0.8x) are the ratios of our bare transport (httpx API over the native
``Http1Transport``) and of the whole ``DownstreamClient.call`` to the aiohttp proxy.
Both ratios are reported: throughput (what the issue asks) and proxy CPU per
request (aiohttp's over ours), which is steadier on a shared machine because it
does not depend on what the neighbours leave of the cores.

    .venv/bin/python bench/micro_transport.py [--seconds 3] [--rounds 3]

``main()`` prints a markdown table and returns the figures as a dict.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

CONNECTIONS = 32
PAYLOAD = b'{"id":"F-0001","title":"SQL injection in login form","severity":"critical"}'
VARIANTS = (
    "aiohttp",  # baseline: aiohttp.ClientSession
    "ours_transport",  # gated: httpx.Request -> Http1Transport (native) -> httpx.Response
    "ours_quiet",  # gated: DownstreamClient.call (breaker, retry policy, propagation, metrics)
    "ours",  # the same with its INFO `downstream_call` JSON log line (to /dev/null)
    "aiohttp_transport",  # httpx.Request -> AiohttpTransport (`transport: aiohttp`)
    "httpx_stock",  # httpx.AsyncClient over httpcore
)


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
    from app.downstream.client import DownstreamClient
    from app.downstream.http1 import Http1Transport
    from app.downstream.transport import BUFFERED, AiohttpTransport

    clients: dict[str, Any] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        if variant == "aiohttp":
            clients["c"] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100))
        elif variant in ("ours", "ours_quiet"):
            settings = ServiceSettings.model_validate({"url": upstream})
            clients["c"] = DownstreamClient("bench", settings)
        elif variant == "ours_transport":
            clients["c"] = Http1Transport(max_connections=100)
        elif variant == "aiohttp_transport":
            clients["c"] = AiohttpTransport(max_connections=100)
        else:
            limits = httpx.Limits(max_connections=100)
            clients["c"] = httpx.AsyncClient(base_url=upstream, limits=limits)
        yield
        await clients["c"].close() if variant == "aiohttp" else await clients["c"].aclose()

    app = FastAPI(lifespan=lifespan)
    url = httpx.URL(upstream + "/item")
    extensions = {"timeout": httpx.Timeout(5.0).as_dict(), BUFFERED: True}

    @app.get("/proxy")
    async def proxy() -> Response:
        client = clients["c"]
        if variant == "aiohttp":
            async with client.get(upstream + "/item") as answer:
                body = await answer.read()
                return Response(body, answer.status, media_type="application/json")
        if variant in ("ours", "ours_quiet"):
            result = await client.call("GET", "/item")
        elif variant in ("ours_transport", "aiohttp_transport"):
            request = httpx.Request("GET", url, extensions=extensions)
            result = await client.handle_async_request(request)
        else:
            result = await client.get("/item")
        return Response(result.content, result.status_code, media_type="application/json")

    return app


def _serve_proxy(variant: str, port: int, upstream: str) -> None:
    import uvicorn

    from app.core.logging import configure_logging

    # The gateway's real JSON log line per call, written to /dev/null.
    configure_logging("WARNING" if variant == "ours_quiet" else "INFO", "json")

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

    done = errors = total = 0
    measuring = False
    stop_at = time.monotonic() + warmup + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done, errors, total
        while time.monotonic() < stop_at:
            try:
                async with session.get(url) as response:
                    await response.read()
                    ok = response.status == 200
            except aiohttp.ClientError:
                ok = False
            total += 1
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
    return {"rps": done / elapsed, "errors": errors, "total": total}


# --- orchestration of the run ---------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args], stderr=subprocess.DEVNULL)


def _wait_listening(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drive(port: int, seconds: float, pid: int) -> dict[str, float]:
    cpu_before = _cpu_seconds(pid)
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--role",
            "load",
            "--port",
            str(port),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        check=True,
        timeout=seconds + 60,
    )
    result: dict[str, float] = json.loads(out.stdout)
    # Includes the warm-up second, so divide by all requests the proxy served.
    result["cpu_us"] = (_cpu_seconds(pid) - cpu_before) * 1e6 / max(1.0, result["total"])
    return result


def run(seconds: float = 5.0, rounds: int = 3) -> dict[str, Any]:
    """Start the stub and the proxies, measure every variant ``rounds`` times, stop all."""
    stub_port = free_port()
    processes = [_spawn("--role", "stub", "--port", str(stub_port))]
    ports = {variant: free_port() for variant in VARIANTS}
    pids: dict[str, int] = {}
    try:
        _wait_listening(stub_port)
        upstream = f"http://127.0.0.1:{stub_port}"
        for variant, port in ports.items():
            processes.append(_spawn("--role", variant, "--port", str(port), "--upstream", upstream))
            pids[variant] = processes[-1].pid
            _wait_listening(port)
        best: dict[str, dict[str, float]] = {}
        for _ in range(rounds):
            for variant, port in ports.items():
                result = _drive(port, seconds, pids[variant])
                if result["rps"] > best.get(variant, {"rps": -1.0})["rps"]:
                    best[variant] = result
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
    rps, cpu = best["aiohttp"]["rps"], best["aiohttp"]["cpu_us"]
    return {
        variant: {**f, "ratio": f["rps"] / rps, "cpu_ratio": cpu / f["cpu_us"]}
        for variant, f in best.items()
    }


def render(results: dict[str, Any]) -> str:
    lines = [
        f"| variant ({CONNECTIONS} connections) | req/s | proxy CPU us/req | errors | "
        "req/s ratio | CPU ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for variant, figures in results.items():
        lines.append(
            f"| {variant} | {figures['rps']:.0f} | {figures['cpu_us']:.0f} | "
            f"{figures['errors']:.0f} | "
            f"{figures['ratio']:.2f} | {figures['cpu_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", default="main", choices=("main", "stub", "load", *VARIANTS))
    parser.add_argument("--port", type=int)
    parser.add_argument("--upstream")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
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
