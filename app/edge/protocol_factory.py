"""A picklable factory of the gateway's HTTP protocol that imports it only when first called.

uvicorn's ``--workers`` supervisor pickles its config (``http`` included) into each
worker and kills a worker that has not answered its health ping within
``timeout_worker_healthcheck`` (5 s) of starting; the worker starts answering only
after the config is unpickled. Unpickling must therefore import little: this module
imports only the standard library, and ``app.edge.server`` (uvicorn's protocol,
Starlette, structlog: about 3x the import time) is imported by the first call, when
the worker's server opens its first connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GatewayProtocolFactory:
    """``GatewayHttpProtocol`` with its header, unread-body and send timeouts, per connection."""

    header_timeout: float
    body_timeout: float = 30.0
    send_timeout: float = 60.0

    def __call__(self, *args: Any, **kwargs: Any) -> asyncio.Protocol:
        from app.edge.server import GatewayHttpProtocol  # deferred: see the module docstring

        return GatewayHttpProtocol(
            *args,
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            send_timeout=self.send_timeout,
            **kwargs,
        )
