"""Bare pass-through proxies: a minimal FastAPI app, no auth, one downstream call.

``--client aiohttp`` forwards with a plain ``aiohttp.ClientSession`` (the
aiohttp-class baseline of the issue); ``--client ours`` forwards with the
gateway's own ``app.downstream.client.DownstreamClient``, whatever transport
it has on the commit measured. The difference between the two rows is the cost
of the gateway's downstream client; the gap to the gateway row is everything else.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import uvicorn
from fastapi import FastAPI, Request, Response

from app.core.config import ServiceSettings
from app.core.logging import configure_logging
from app.downstream.client import DownstreamClient
from bench.targets import service_settings

Forward = Callable[[str], Awaitable[tuple[int, bytes, str]]]
Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]


def _aiohttp_app(upstream: str) -> FastAPI:
    import aiohttp  # the `bench` extra; the harness marks this row unavailable without it

    session: dict[str, aiohttp.ClientSession] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=100)
        session["s"] = aiohttp.ClientSession(upstream, connector=connector)
        yield
        await session["s"].close()

    async def forward(path: str) -> tuple[int, bytes, str]:
        async with session["s"].get(path) as resp:
            return resp.status, await resp.read(), resp.content_type

    return _proxy_app(forward, lifespan)


def _ours_app(upstream: str) -> FastAPI:
    clients: dict[str, DownstreamClient] = {}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        settings = ServiceSettings.model_validate(service_settings(upstream))
        clients["c"] = DownstreamClient("findings", settings)
        yield
        await clients["c"].aclose()

    async def forward(path: str) -> tuple[int, bytes, str]:
        resp = await clients["c"].call("GET", path)
        return resp.status_code, resp.content, resp.headers.get("content-type", "")

    return _proxy_app(forward, lifespan)


def _proxy_app(forward: Forward, lifespan: Lifespan) -> FastAPI:
    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/{path:path}")
    async def proxy(request: Request) -> Response:
        status, body, content_type = await forward(request.scope["path"])
        return Response(body, status_code=status, media_type=content_type)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--client", choices=("aiohttp", "ours"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    args = parser.parse_args()
    # No auth, no logs: the client's per-call INFO line is not part of a bare proxy.
    configure_logging("WARNING", "json")
    build = _aiohttp_app if args.client == "aiohttp" else _ours_app
    uvicorn.run(
        build(args.upstream),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
