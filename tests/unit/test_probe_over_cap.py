"""Above the connection cap, the probes are served a few at once, never more."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.edge.server import MAX_PROBES_OVER_CAP, ProbeOverCap


@pytest.mark.anyio
async def test_probes_above_the_cap_run_a_few_at_once_the_rest_get_the_503() -> None:
    release = asyncio.Event()
    running = 0

    async def probe(scope: Any, receive: Any, send: Any) -> None:
        nonlocal running
        running += 1
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    statuses: list[int] = []
    refused_all = asyncio.Event()

    async def ask() -> None:
        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
                if statuses.count(503) == MAX_PROBES_OVER_CAP * 4:
                    refused_all.set()

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        scope = {"type": "http", "method": "GET", "path": "/readyz", "headers": []}
        await ProbeOverCap(probe)(scope, receive, send)

    asks = [asyncio.create_task(ask()) for _ in range(MAX_PROBES_OVER_CAP * 5)]
    await asyncio.wait_for(refused_all.wait(), timeout=10)  # the others are refused at once
    assert running == MAX_PROBES_OVER_CAP
    assert statuses == [503] * (MAX_PROBES_OVER_CAP * 4)
    release.set()
    await asyncio.gather(*asks)
    assert statuses.count(200) == MAX_PROBES_OVER_CAP
    assert ProbeOverCap.running == 0  # every slot given back
    await ask()  # and a probe is served again once they are
    assert statuses[-1] == 200
