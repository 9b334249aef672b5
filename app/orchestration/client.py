"""Downstream calls: one pooled ``httpx.AsyncClient`` per service.

``DownstreamClient.call`` is the only way the gateway talks to a service. It
propagates the corr_id, applies the service's timeouts, logs each call with the
corr_id bound by the edge, and maps transport failures onto the error tree
(timeout 504, connect failure or 5xx 502) without leaking downstream bodies.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import httpx
import structlog

from app.core.config import ServiceSettings
from app.core.errors import DownstreamError, DownstreamTimeout, NotFound, ServiceUnavailable
from app.ops.metrics import observe_downstream

log = structlog.get_logger("gateway.downstream")


def _timeout(settings: ServiceSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.connect_timeout,
        read=settings.read_timeout,
        write=settings.write_timeout,
        pool=settings.pool_timeout,
    )


class DownstreamClient:
    """A named downstream service behind one connection pool."""

    def __init__(
        self,
        name: str,
        settings: ServiceSettings,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.name = name
        self.settings = settings
        self._client = httpx.AsyncClient(
            base_url=str(settings.url),
            timeout=_timeout(settings),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_keepalive,
            ),
            transport=transport,
            follow_redirects=False,
        )

    async def call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; raise a ``DownstreamError`` for anything but a usable answer."""
        outgoing = dict(headers or {})
        corr_id = structlog.contextvars.get_contextvars().get("corr_id")
        if corr_id:
            outgoing["x-request-id"] = str(corr_id)
        started = time.perf_counter()
        try:
            response = await self._client.request(
                method, path, json=json, params=params, headers=outgoing
            )
        except httpx.TimeoutException as exc:
            self._log(method, path, started, outcome="timeout", error=type(exc).__name__)
            raise DownstreamTimeout(self.name, f"The {self.name} service timed out.") from None
        except httpx.TransportError as exc:
            self._log(method, path, started, outcome="transport_error", error=type(exc).__name__)
            raise DownstreamError(self.name, f"The {self.name} service is unreachable.") from None
        self._log(method, path, started, outcome="response", status=response.status_code)
        if response.status_code >= 500:
            raise DownstreamError(self.name, f"The {self.name} service failed.")
        return response

    def _log(self, method: str, path: str, started: float, **fields: Any) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        observe_downstream(self.name, str(fields["outcome"]), int(fields.get("attempt", 1)))
        log.info(
            "downstream_call",
            service=self.name,
            method=method,
            path=path,
            duration_ms=duration_ms,
            **fields,
        )

    async def aclose(self) -> None:
        await self._client.aclose()


class ServiceRegistry:
    """Every configured service's client; opened in the lifespan, closed on shutdown."""

    def __init__(
        self,
        services: Mapping[str, ServiceSettings],
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._clients = {
            name: DownstreamClient(name, cfg, transport) for name, cfg in services.items()
        }

    def get(self, name: str) -> DownstreamClient:
        client = self._clients.get(name)
        if client is None:
            raise ServiceUnavailable(f"The {name} service is not configured.")
        return client

    @property
    def names(self) -> list[str]:
        return sorted(self._clients)

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()


def raise_for_client_error(service: str, response: httpx.Response) -> None:
    """Map a downstream 404 to ours; other 4xx mean the gateway asked wrongly (502)."""
    if response.status_code == 404:
        raise NotFound("The requested resource does not exist.")
    if response.status_code >= 400:
        raise DownstreamError(service, f"The {service} service rejected the request.")
