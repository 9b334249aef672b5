"""The load generator: closed-loop keep-alive connections, a fresh signature per request.

Each request is signed with ``app.authn.signer.sign_headers`` (new ``created`` and
``nonce`` every time), so the gateway's replay check sees real traffic; unsigned
targets get the same bytes and ignore the headers, so every row costs the
generator the same. Connections are asyncio protocols on uvloop with a minimal
response reader (status line, ``content-length``). The generator runs in its own
processes (``LoadWorker``) and reports its own CPU time, so a reader can see it
was not the bottleneck.
"""

from __future__ import annotations

import array
import asyncio
import itertools
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any, cast

import uvloop

from app.authn.base import Message
from app.authn.signer import sign_headers


@dataclass(frozen=True)
class Job:
    """One measured run against one target."""

    port: int
    path_template: str  # e.g. "/v1/engagements/{engagement}/findings"
    callers: list[tuple[str, str]]
    connections: int
    duration_s: float
    max_requests: int = 0  # 0: bounded by duration only
    key_id: str = ""
    secret: bytes = b""
    timeout_s: float = 30.0


@dataclass
class Outcome:
    """What one worker process measured."""

    ok: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_us: bytes = b""
    wall_s: float = 0.0
    cpu_s: float = 0.0
    failure: str = ""


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        head_end = self.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = bytes(self.buf[:head_end]).lower()
        marker = head.find(b"\r\ncontent-length:")
        if marker < 0:
            self._finish(head, head_end + 4)  # e.g. 204: no body
            return
        line_end = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17 : line_end if line_end > 0 else None])
        if len(self.buf) >= head_end + 4 + length:
            self._finish(head, head_end + 4 + length)

    def _finish(self, head: bytes, consumed: int) -> None:
        del self.buf[:consumed]
        # A server that ends keep-alive (nginx after keepalive_requests) says so; the
        # next request then opens a new connection instead of failing on this one.
        if b"\r\nconnection: close" in head and self.transport is not None:
            self.transport.close()
        if self.waiter and not self.waiter.done():
            self.waiter.set_result(int(head[9:12]))

    async def send(self, request: bytes) -> int:
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


def request_factory(job: Job, offset: int) -> Callable[[], bytes]:
    """A function returning the next request's bytes, freshly signed."""
    callers = itertools.cycle(job.callers[offset % len(job.callers) :] + job.callers)
    host = f"127.0.0.1:{job.port}"

    def make() -> bytes:
        subject, engagement = next(callers)
        path = job.path_template.format(engagement=engagement)
        lines = [f"GET {path} HTTP/1.1", f"host: {host}", f"x-auth-subject: {subject}"]
        if job.secret:
            message = Message("GET", path, "", "http", host, {"x-auth-subject": [subject]})
            signed = sign_headers(message, b"", key_id=job.key_id, secret=job.secret)
            lines.extend(f"{name}: {value}" for name, value in signed.items())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    return make


async def _client(
    job: Job, offset: int, deadline: float, budget: list[int], out: Outcome, open_conns: set[_Conn]
) -> None:
    loop = asyncio.get_running_loop()
    lat = array.array("d")
    make = request_factory(job, offset)
    conn: _Conn | None = None
    while time.perf_counter() < deadline and budget[0] != 0:
        budget[0] -= 1
        try:
            if conn is None or conn.transport is None or conn.transport.is_closing():
                _, conn = await loop.create_connection(_Conn, "127.0.0.1", job.port)
                open_conns.add(conn)
            request = make()
            started = time.perf_counter()
            status = await conn.send(request)
        except OSError:
            out.errors += 1
            out.statuses[0] = out.statuses.get(0, 0) + 1  # 0: transport error, no answer
            if conn is not None and conn.transport is not None:
                conn.transport.close()
            conn = None
            continue
        lat.append((time.perf_counter() - started) * 1e6)
        out.statuses[status] = out.statuses.get(status, 0) + 1
        if status < 400:
            out.ok += 1
        else:
            out.errors += 1
    if conn is not None and conn.transport is not None:
        conn.transport.close()
    out.latencies_us += lat.tobytes()


async def run_job(job: Job, connections: int, max_requests: int) -> Outcome:
    """Drive ``connections`` closed loops until the deadline or the request budget."""
    out = Outcome()
    budget = [max_requests if max_requests > 0 else -1]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    deadline = wall0 + job.duration_s
    open_conns: set[_Conn] = set()
    # One watchdog instead of a timer per request: past the deadline plus the timeout,
    # every connection still waiting is closed and its request counted as an error.
    watchdog = asyncio.get_running_loop().call_later(
        job.duration_s + job.timeout_s, _close_all, open_conns
    )
    clients = (_client(job, i, deadline, budget, out, open_conns) for i in range(connections))
    await asyncio.gather(*clients)
    watchdog.cancel()
    out.wall_s = time.perf_counter() - wall0
    out.cpu_s = time.process_time() - cpu0
    return out


def _close_all(conns: set[_Conn]) -> None:
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


def _worker(conn: Connection) -> None:
    while True:
        message = conn.recv()
        if message is None:
            return
        job, connections, max_requests = message
        try:
            outcome = uvloop.run(run_job(job, connections, max_requests))
        except Exception as exc:  # reported to the parent, which marks the cell failed
            outcome = Outcome(failure=f"{type(exc).__name__}: {exc}")
        conn.send(asdict(outcome))


class LoadWorker:
    """A load-generating process kept alive across cells (no start-up per cell)."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child,), daemon=True)
        self._proc.start()

    def submit(self, job: Job, connections: int, max_requests: int) -> None:
        self._conn.send((job, connections, max_requests))

    def result(self, timeout: float) -> Outcome:
        if not self._conn.poll(timeout):
            raise TimeoutError("load worker did not answer")
        raw: dict[str, Any] = self._conn.recv()
        return Outcome(**raw)

    def close(self) -> None:
        self._conn.send(None)
        self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()


def latencies(outcomes: list[Outcome]) -> list[float]:
    values = array.array("d")
    for out in outcomes:
        values.frombytes(out.latencies_us)
    return sorted(values)


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]
