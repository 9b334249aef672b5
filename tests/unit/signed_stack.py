"""An in-process gateway in front of the three stub services, driven with raw requests.

What the signed fuzz (``test_signed_fuzz.py``) needs to send hundreds of requests a
second that pass authn: the gateway's own app with the stub apps as its downstream
(an ``httpx.ASGITransport`` per service, chosen by host, so the stubs' real routes
and validation answer), a policy that lets one subject call every route, and a
driver that hands the app an ASGI scope built as uvicorn's httptools protocol
builds it (``raw_path`` as sent, ``path`` percent-decoded, the query's bytes, the
header fields in order), signed with the reference signer over exactly those bytes.

Weighed against real servers on loopback (``tests/integration``): a request costs
about 3 ms here against 10-20 ms through sockets, and the wire's own refusals
(``app.edge.server``) are tested there; so the fuzz generates only what the HTTP/1.1
parser lets through (printable ASCII targets, no CR/LF/NUL in fields).
"""

from __future__ import annotations

import asyncio
import shutil
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from starlette.types import Message as AsgiMessage

from app.authn.base import Message
from app.authn.signer import sign_headers
from app.core.config import Settings
from app.downstream.propagation import REQUEST_ID
from app.main import create_app
from app.stubs.server import STUB_NAMES, create_stub_app
from tests.conftest import POLICY_DIR, TEST_KEY_ENV, TEST_KEY_ID, TEST_SECRET

HOST = "gateway.test"
# Global roles that reach every route: reads and writes in every engagement, closed
# ones included (records_officer), the close saga (engagement_lead) and /admin.
FUZZ_SUBJECT = "fuzzer"
FUZZ_ROLES = ("records_officer", "engagement_lead", "security_admin")
PASSTHROUGH = [
    {
        "path": "/v1/engagements/{engagement_id}/reports/{report_id}/content",
        "service": "reports",
        "upstream_path": "/engagements/{engagement_id}/reports/{report_id}/content",
        "forward_headers": ["X-Client-Ref"],
    },
    {
        "path": "/v1/engagements/{engagement_id}/evidence",
        "service": "findings",
        "upstream_path": "/engagements/{engagement_id}/evidence",
        "methods": ["POST"],
        "statuses": [201],
        "forward_headers": ["Idempotency-Key"],
    },
]
AUTHORIZER_ROUTES = [
    "/v1/engagements/{engagement_id}/findings",
    "/v1/engagements/{engagement_id}/findings/{finding_id}",
    "/v1/engagements/{engagement_id}/overview",
    "/v1/engagements/{engagement_id}/close",
    "/admin/{rest:path}",
]


def fuzz_policy(root: Path) -> Path:
    """The shipped policy with ``FUZZ_SUBJECT`` holding ``FUZZ_ROLES`` globally."""
    target = root / "policies"
    shutil.copytree(POLICY_DIR, target)
    with (target / "policy.csv").open("a") as policy:
        policy.writelines(f"g2, {FUZZ_SUBJECT}, {role}\n" for role in FUZZ_ROLES)
    return target


def fuzz_settings(policy_dir: Path) -> Settings:
    return Settings(
        signing={"keys": [{"id": TEST_KEY_ID, "secret_env": TEST_KEY_ENV}]},
        policy={"dir": str(policy_dir), "watch_interval": 0},
        services={name: {"url": f"http://{name}.stub"} for name in STUB_NAMES},
        orchestration={"passthrough": PASSTHROUGH},
        authorizer={"routes": AUTHORIZER_ROUTES},
    )


@dataclass(frozen=True)
class Downstream:
    """One request a stub received, the corr_id the gateway sent it under, and the
    stub's status (0: the stub raised)."""

    service: str
    method: str
    path: str
    corr_id: str | None
    status: int

    @property
    def accepted_write(self) -> bool:
        return self.method not in ("GET", "HEAD", "OPTIONS") and 200 <= self.status < 400


class StubTransport(httpx.AsyncBaseTransport):
    """The stub apps as the gateway's downstream, by host; every request recorded."""

    def __init__(self) -> None:
        self.apps = {name: create_stub_app(name) for name in STUB_NAMES}
        self._asgi = {name: httpx.ASGITransport(app=app) for name, app in self.apps.items()}
        self.seen: list[Downstream] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        service = request.url.host.partition(".")[0]
        path = request.url.raw_path.decode("ascii")
        corr_id = request.headers.get(REQUEST_ID)
        status = 0
        try:
            response = await self._asgi[service].handle_async_request(request)
            status = response.status_code
            return response
        finally:
            self.seen.append(Downstream(service, request.method, path, corr_id, status))

    def requests_of(self, corr_id: str) -> list[Downstream]:
        return [d for d in self.seen if d.corr_id == corr_id]


@dataclass
class RawRequest:
    """A request as the HTTP parser hands it over: target bytes and fields as sent."""

    method: str
    raw_path: bytes
    query: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def signed(self, cover: Sequence[str] = ()) -> RawRequest:
        """This request with Host, the subject and the profile's signature (covering
        ``cover`` too, those of them present), as a trusted proxy would send it."""
        headers = [(b"host", HOST.encode()), (b"x-auth-subject", FUZZ_SUBJECT.encode())]
        headers += self.headers
        if self.body:
            headers.append((b"content-length", str(len(self.body)).encode()))
        # Field values are sent as UTF-8, and the reference signer signs text as UTF-8:
        # the signed octets are those on the wire (the verifier's ``_octets``).
        fields: dict[str, list[str]] = {}
        for name, value in headers:
            fields.setdefault(name.decode("ascii"), []).append(value.decode("utf-8"))
        message = Message(
            self.method,
            self.raw_path.decode("latin-1"),
            self.query.decode("latin-1"),
            "http",
            HOST,
            fields,
        )
        added = sign_headers(
            message,
            self.body,
            key_id=TEST_KEY_ID,
            secret=TEST_SECRET,
            cover=[name for name in cover if name in fields],
        )
        headers += [(k.encode("ascii"), v.encode("ascii")) for k, v in added.items()]
        return RawRequest(self.method, self.raw_path, self.query, headers, self.body)

    def scope(self) -> dict[str, Any]:
        """The ASGI scope uvicorn's httptools protocol builds for these bytes."""
        path = self.raw_path.decode("ascii")
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.4"},
            "http_version": "1.1",
            "method": self.method,
            "scheme": "http",
            "path": urllib.parse.unquote(path) if "%" in path else path,
            "raw_path": self.raw_path,
            "query_string": self.query,
            "root_path": "",
            "headers": list(self.headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8000),
            "state": {},
        }


@dataclass
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.decode("latin-1").lower() == name]
        assert len(values) <= 1, f"{name} sent {len(values)} times"
        return values[0].decode("latin-1") if values else None

    def json(self) -> Any:
        return orjson.loads(self.body)


async def call(app: FastAPI, request: RawRequest) -> Answer:
    """One request, as uvicorn delivers it: the body at once, then a wait for the end."""
    started: dict[str, Any] = {}
    chunks: list[bytes] = []
    answered = asyncio.Event()
    delivered = False

    async def receive() -> AsgiMessage:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        await answered.wait()
        return {"type": "http.disconnect"}

    async def send(message: AsgiMessage) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                answered.set()

    await app(request.scope(), receive, send)
    assert answered.is_set(), "the app returned without ending its answer"
    return Answer(started["status"], list(started.get("headers", [])), b"".join(chunks))


class InProcessGateway:
    """The gateway app with its lifespan entered, on one event loop, in front of the stubs."""

    def __init__(self, root: Path) -> None:
        self.transport = StubTransport()
        self.app = create_app(fuzz_settings(fuzz_policy(root)), transport=self.transport)
        self._runner = asyncio.Runner()
        self._lifespan = self.app.router.lifespan_context(self.app)
        self._runner.run(self._lifespan.__aenter__())

    def send(self, request: RawRequest) -> Answer:
        """The answer; ``transport.seen`` then holds what this request sent downstream
        (a client may send the same X-Request-ID, so what went before is forgotten)."""
        self.transport.seen.clear()
        return self._runner.run(call(self.app, request))

    def close(self) -> None:
        try:
            self._runner.run(self._lifespan.__aexit__(None, None, None))
        finally:
            self._runner.close()


def in_process_gateway(root: Path) -> InProcessGateway:
    """Build one with the test key in the environment (read when the app is built)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(TEST_KEY_ENV, TEST_SECRET.decode())
        return InProcessGateway(root)
