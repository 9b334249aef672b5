"""A bounded, seeded mix of requests for the resource soak, sent on raw asyncio sockets.

Raw sockets, not a client library: a client that leaves mid-body or mid-answer must
leave exactly there, and the load must cost the test process little CPU (it shares
two cores with the gateway and the stubs). Every request but the keep-alive ones
asks ``Connection: close`` and is read to EOF, so no framing is parsed here.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import httpx
import orjson

from tests.conftest import signer

ENGAGEMENT = "/v1/engagements/acme-2026"
FINDINGS = f"{ENGAGEMENT}/findings"
CONTENT = f"{ENGAGEMENT}/reports/R-0001/content"
EVIDENCE = f"{ENGAGEMENT}/evidence"
EVIDENCE_PUT = f"{ENGAGEMENT}/evidence-put"
KIB = 1024
ANSWER_SECONDS = 20.0  # a bound on one exchange (the gateway's own timeouts are far below)

# The pass-through routes the soak's gateway serves (upstream: the stubs' own paths).
PASSTHROUGH = [
    {
        "path": "/v1/engagements/{engagement_id}/reports/{report_id}/content",
        "service": "reports",
        "upstream_path": "/engagements/{engagement_id}/reports/{report_id}/content",
    },
    {
        "path": "/v1/engagements/{engagement_id}/evidence",
        "service": "findings",
        "upstream_path": "/engagements/{engagement_id}/evidence",
        "methods": ["POST"],
        "max_request_bytes": 1024 * KIB,
    },
    {  # a bodied PUT the stub has no route for: its 405 comes before it reads the body
        "path": "/v1/engagements/{engagement_id}/evidence-put",
        "service": "findings",
        "upstream_path": "/engagements/{engagement_id}/evidence",
        "methods": ["PUT"],
        "policy_object": "/v1/engagements/{engagement_id}/evidence",
        "action": "POST",
    },
]


@dataclass(frozen=True)
class Target:
    host: str
    port: int

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


def signed(
    target: Target,
    method: str,
    path: str,
    body: bytes = b"",
    subject: str | None = "alice",
    fields: dict[str, str] | None = None,
) -> bytes:
    """The request head (signed as ``subject`` unless ``None``), declaring ``len(body)``."""
    request = httpx.Request(method, target.url(path), content=body, headers=fields or {})
    if subject is not None:
        request = next(signer(subject).auth_flow(request))
    lines = [f"{method} {request.url.raw_path.decode()} HTTP/1.1"]
    lines += [
        f"{name}: {value}"
        for name, value in request.headers.items()
        if name.lower() not in ("connection", "content-length")
    ]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _exchange(
    target: Target,
    head: bytes,
    body_chunks: Sequence[bytes] = (),
    *,
    pause: float = 0.0,
    read_at_most: int | None = None,
) -> str:
    """Send ``head`` and the chunks; read the answer to EOF (or ``read_at_most`` bytes,
    then leave). The status code as text, or what went wrong on our side."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(head)
        for chunk in body_chunks:
            writer.write(chunk)
            await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        got = b""
        async with asyncio.timeout(ANSWER_SECONDS):
            while chunk := await reader.read(64 * KIB):
                got += chunk
                if read_at_most is not None and len(got) >= read_at_most:
                    break
        return got[9:12].decode("latin-1") if got.startswith(b"HTTP/1.1 ") else "none"
    except (ConnectionError, TimeoutError) as exc:
        return type(exc).__name__
    finally:
        if read_at_most is None:
            writer.close()
        else:  # leave mid-answer: a reset, as a client that went away
            writer.transport.abort()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def _left_mid_body(target: Target) -> str:
    """A signed upload that declares 256 KiB, sends 32 KiB and goes."""
    body = random.randbytes(256 * KIB)
    _, writer = await asyncio.open_connection(target.host, target.port)
    try:
        writer.write(signed(target, "POST", EVIDENCE, body))
        writer.write(body[: 32 * KIB])
        await writer.drain()
        await asyncio.sleep(0.05)  # the gateway has forwarded the head by now
    finally:
        writer.transport.abort()
    return "left"


async def _keep_alive(target: Target) -> str:
    """Three signed GETs on one connection, each answer read by its Content-Length."""
    reader, writer = await asyncio.open_connection(target.host, target.port)
    statuses = []
    try:
        async with asyncio.timeout(ANSWER_SECONDS):
            for _ in range(3):
                head = signed(target, "GET", FINDINGS).replace(b"Connection: close\r\n", b"")
                writer.write(head)
                answer = await reader.readuntil(b"\r\n\r\n")
                statuses.append(answer[9:12].decode())
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in answer.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                await reader.readexactly(length)
    except (ConnectionError, TimeoutError, asyncio.IncompleteReadError) as exc:
        statuses.append(type(exc).__name__)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return "+".join(statuses)


def _kinds(target: Target) -> dict[str, tuple[int, Callable[[], Awaitable[str]]]]:
    """Each kind of request: its weight in the mix and how to send it."""
    finding = orjson.dumps({"title": "Soak finding", "severity": "low"})
    small = random.randbytes(4 * KIB)
    streamed = [random.randbytes(16 * KIB) for _ in range(16)]
    whole = b"".join(streamed)
    put = random.randbytes(64 * KIB)
    json = {"content-type": "application/json"}
    return {
        "list": (8, lambda: _exchange(target, signed(target, "GET", FINDINGS))),
        "get": (3, lambda: _exchange(target, signed(target, "GET", f"{FINDINGS}/F-0001"))),
        "create": (
            3,
            lambda: _exchange(
                target, signed(target, "POST", FINDINGS, finding, fields=json), [finding]
            ),
        ),
        "overview": (4, lambda: _exchange(target, signed(target, "GET", f"{ENGAGEMENT}/overview"))),
        "content_small": (
            4,
            lambda: _exchange(target, signed(target, "GET", f"{CONTENT}?size=2000")),
        ),
        "content_large": (
            3,
            lambda: _exchange(target, signed(target, "GET", f"{CONTENT}?size={1024 * KIB}")),
        ),
        "upload_small": (
            3,
            lambda: _exchange(target, signed(target, "POST", EVIDENCE, small), [small]),
        ),
        "upload_streamed": (
            2,
            lambda: _exchange(target, signed(target, "POST", EVIDENCE, whole), streamed),
        ),
        "put_refused": (
            1,
            lambda: _exchange(target, signed(target, "PUT", EVIDENCE_PUT, put), [put]),
        ),
        "left_mid_body": (2, lambda: _left_mid_body(target)),
        "left_mid_answer": (
            2,
            lambda: _exchange(
                target,
                signed(target, "GET", f"{CONTENT}?size={2048 * KIB}"),
                read_at_most=64 * KIB,
            ),
        ),
        "unsigned": (2, lambda: _exchange(target, signed(target, "GET", FINDINGS, subject=None))),
        "denied": (
            2,
            lambda: _exchange(
                target, signed(target, "POST", FINDINGS, finding, "carol", json), [finding]
            ),
        ),
        "keep_alive": (2, lambda: _keep_alive(target)),
    }


async def run_load(target: Target, requests: int, concurrency: int, seed: int) -> Counter[str]:
    """``requests`` requests of the seeded mix, ``concurrency`` at a time: outcomes counted."""
    random.seed(seed)
    kinds = _kinds(target)
    names = list(kinds)
    chosen = random.choices(names, weights=[kinds[n][0] for n in names], k=requests)
    queue: asyncio.Queue[str] = asyncio.Queue()
    for name in chosen:
        queue.put_nowait(name)
    outcomes: Counter[str] = Counter()

    async def worker() -> None:
        while not queue.empty():
            name = queue.get_nowait()
            outcomes[f"{name}:{await kinds[name][1]()}"] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes
