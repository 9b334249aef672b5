"""The ``shutdown_complete`` line is the app's last word, after its pools and Redis closed.

It came from ``ops_lifespan``, which exits before the nonce store closes Redis and
before the service pools close: it said ``redis_closed: false`` whenever Redis was in
use, and "complete" while the pools were still open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from app.main import create_app
from tests.conftest import free_port, make_settings

pytestmark = pytest.mark.usefixtures("test_key_env")


def _announcing(name: str, close: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def spy() -> None:
        await close()
        structlog.get_logger("test").info(name)

    return spy


def _shut_down(settings_overrides: dict[str, Any]) -> list[str]:
    """Run the app's lifespan through; its events as ``event:redis_closed``."""
    app = create_app(make_settings({"findings": "http://127.0.0.1:1"}, **settings_overrides))

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            app.state.services.aclose = _announcing("test_pools_closed", app.state.services.aclose)
            if app.state.redis is not None:
                app.state.redis.aclose = _announcing("test_redis_closed", app.state.redis.aclose)

    with capture_logs() as logs:
        asyncio.run(scenario())
    return [f"{line['event']}:{line.get('redis_closed')}" for line in logs]


def test_with_redis_the_line_comes_after_redis_and_the_pools_closed() -> None:
    unused = f"redis://127.0.0.1:{free_port()}/0"
    events = _shut_down({"redis": {"url": unused, "socket_timeout": 0.2}})
    closing = [e for e in events if e.startswith(("test_", "shutdown_complete"))]
    assert closing == [
        "test_redis_closed:None",
        "test_pools_closed:None",
        "shutdown_complete:True",
    ]


def test_without_redis_it_says_so() -> None:
    events = _shut_down({})
    assert [e for e in events if e.startswith(("test_", "shutdown_complete"))] == [
        "test_pools_closed:None",
        "shutdown_complete:False",
    ]
