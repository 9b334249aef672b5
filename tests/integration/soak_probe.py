"""``gateway serve`` with one test-only route: what /proc cannot show of the process.

Run as ``python -m tests.integration.soak_probe serve --port P --config FILE``: the
real command line (uvloop, the gateway's own edge protocol, one process), with
``GET /_soak/state`` added to the app it builds. The resource soak
(``test_soak_resources.py``) reads file descriptors and sockets from ``/proc``; the
asyncio tasks, the transports' pools and the breakers' entered calls live only in
the process's memory, so this route reports them. It is never part of the gateway:
only this module, which the tests start, adds it.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from fastapi import FastAPI, Request

import app.main
from app.cli.main import main
from app.downstream.http1 import Http1Transport

STATE_PATH = "/_soak/state"


def _pool(transport: object) -> dict[str, int]:
    """Open and idle connections of a native transport, and its slots taken."""
    if not isinstance(transport, Http1Transport):
        return {}
    return {
        "open": len(transport._open),
        "idle": sum(len(idle) for idle in transport._idle.values()),
        "slots_free": transport._slots._value,
    }


async def _state(request: Request) -> dict[str, Any]:
    registry = request.app.state.services
    services: dict[str, Any] = {}
    for name in registry.names:
        client = registry.get(name)
        snapshot = client.breaker.snapshot()
        services[name] = {
            **_pool(client._transport),
            "breaker": snapshot.state,
            "trials_in_flight": snapshot.trials_in_flight,
        }
    # Minus this request's own task: what is left runs whether or not anyone asks.
    return {"tasks": len(asyncio.all_tasks()) - 1, "services": services}


def _with_probe(create: Any) -> Any:
    def create_app(*args: Any, **kwargs: Any) -> FastAPI:
        application: FastAPI = create(*args, **kwargs)
        application.add_api_route(STATE_PATH, _state, methods=["GET"], include_in_schema=False)
        return application

    return create_app


if __name__ == "__main__":
    app.main.create_app = _with_probe(app.main.create_app)  # type: ignore[method-assign]
    sys.exit(main())
