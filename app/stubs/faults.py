"""Real faults for stub services: latency, errors, hangs, dropped connections, slow bodies.

``FaultInjector`` is a pure ASGI middleware in front of a stub's routes; control
paths (``/_...``) are never faulted. Faults are set by ``gateway stub`` flags,
replaced by ``POST /_faults`` (fields left out take their defaults, the seed the
stub's own) or merged by ``PATCH /_faults`` (fields left out keep their values),
and are deterministic for a given ``seed`` (the error-rate dice come from a
seeded ``random.Random``). Every non-control request is counted, so tests can
assert that a call never reached the service; a faulted one is recorded at
``/_seen`` like a served one, with the fault named.

A request's faults are decided when it arrives, before any latency or hang: the
faults in force then apply to it whole, and it takes its owed failure or roll of
the dice in arrival order. A change made while it waits (a ``fail_next`` set
after a caller gave up on it) never applies to it; the change only releases it
from a hang. A request the stub then refuses (a chunked body found over the cap
only as it is read) gives back what it took, an owed failure or its roll
(``Draw``): the answered requests fail as configured, as if it had never come.
A request whose client has gone by the time its fault or route would answer is
recorded with ``client_gone`` and not answered.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Annotated, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logging import get_logger
from app.stubs.limits import (
    BODY_TOO_LARGE,
    DEFAULT_MAX_BODY_BYTES,
    BodyTooLarge,
    capped,
    declared_too_large,
    too_large,
)
from app.stubs.recording import record_fault, record_refusal
from app.stubs.stopping import Stopping

# RFC 9110's methods and PATCH (RFC 5789), as sent: method names are case-sensitive.
HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]


def _some_methods(methods: tuple[str, ...]) -> tuple[str, ...]:
    if not methods:  # a fault scoped to no method would silently never apply
        raise ValueError("name at least one method, or leave methods out for every method")
    return methods


class FaultConfig(BaseModel):
    """The faults in force; every field off by default.

    Strict: a value of another JSON type is refused, not coerced (lax mode took
    ``"hang": "yes"`` as true and ``"latency_ms": "100"`` as 100); a whole number
    still does for a fraction or for seconds (``"error_rate": 1``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    latency_ms: Annotated[int, Field(ge=0, le=60_000)] = 0
    error_rate: Annotated[float, Field(ge=0, le=1)] = 0.0
    # 4xx too: what a service's 400, 404, 409 or 429 means to the caller is tested this way.
    error_status: Annotated[int, Field(ge=400, le=599)] = 500
    fail_next: Annotated[int, Field(ge=0, le=10_000)] = 0
    fail_status: Annotated[int, Field(ge=400, le=599)] = 503
    retry_after: Annotated[int, Field(ge=0, le=3600)] | None = None
    hang: bool = False
    hang_max_seconds: Annotated[float, Field(gt=0, le=600)] = 30.0
    reset: bool = False
    slow_body_ms: Annotated[int, Field(ge=0, le=10_000)] = 0
    slow_chunk_bytes: Annotated[int, Field(ge=1, le=1 << 20)] = 1024
    # A prefix without the leading slash would match no path: the fault silently never applied.
    path_prefix: Annotated[str, Field(pattern=r"^/", max_length=2048)] = "/"
    # None: every method. A JSON list is taken for the tuple (strict would want a tuple).
    methods: (
        Annotated[tuple[HttpMethod, ...], Field(strict=False), AfterValidator(_some_methods)] | None
    ) = None
    seed: int = 0

    def applies_to(self, method: str, path: str) -> bool:
        """Whether a request is in the faults' scope: its path and its method."""
        in_methods = self.methods is None or method in self.methods
        return in_methods and path.startswith(self.path_prefix)


log = get_logger("stub.faults")


class ConnectionDropped(Exception):
    """Raised after the status line so the server drops the connection mid-response."""


class _QuietExpectedDrops(logging.Filter):
    """Drop uvicorn's "Exception in ASGI application" traceback (error level) for a
    connection dropped on purpose: by the reset fault or a stop cutting off a request
    the stub held (the stub logs one line of its own), or cancelled by uvicorn's
    shutdown timeout (its "Cancel N running task(s)" says so)."""

    def filter(self, record: logging.LogRecord) -> bool:
        expected = (ConnectionDropped, asyncio.CancelledError)
        return record.exc_info is None or not isinstance(record.exc_info[1], expected)


# On the logger uvicorn's protocol writes to (its filters survive any handler set-up),
# once per process: a stub in a test process is quiet as one run by ``gateway stub``.
logging.getLogger("uvicorn.error").addFilter(_QuietExpectedDrops())
# Sent to a request a shutdown cuts off before it was answered; its connection is then
# closed. Without it uvicorn answered it "500 Internal Server Error" in full.
_CUT_OFF: Message = {"type": "http.response.start", "status": 503, "headers": []}


class _Answer:
    """``send``, noting whether the answer has started."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self.send(message)


@dataclass(frozen=True, slots=True)
class Draw:
    """What one arriving request took from the faults: the status to fail it with (if
    any), and what ``FaultState.give_back`` needs to return it."""

    status: int | None
    owed_since: int | None = None  # an owed failure: of the owed failures set then
    roll: float | None = None  # a roll of these dice
    dice: random.Random | None = None


class FaultState:
    """The current faults, the seeded dice and the request counters of one stub."""

    def __init__(self, config: FaultConfig | None = None, seed: int = 0) -> None:
        self.requests = 0
        self.faulted = 0
        self.seed = seed  # the stub's own: the seed of a replacement that names none
        self.remaining_failures = 0
        self._owed_since = 0  # bumped whenever the owed failures are set anew
        self._dice = random.Random(seed)
        self._returned: deque[float] = deque()  # rolls given back, taken before new ones
        self._released = asyncio.Event()
        self.stopping = Stopping()  # begun by the server's shutdown (StubServer)
        self.replace(config or FaultConfig())

    def replace(self, config: FaultConfig) -> None:
        """Replace the faults (the seed, when not given, is the stub's own)."""
        if "seed" not in config.model_fields_set:
            config = config.model_copy(update={"seed": self.seed})
        self.configure(config)

    def reset(self, config: FaultConfig) -> None:
        """``config`` in force and the counters at zero, as a stub that just started."""
        self.configure(config)
        self.requests = self.faulted = 0

    def merge(self, patch: FaultConfig) -> None:
        """Set only the fields ``patch`` names; failures still owed and the dice carry on."""
        given = patch.model_dump(exclude_unset=True)
        owed, since = self.remaining_failures, self._owed_since
        dice, returned = self._dice, self._returned
        self.configure(self.config.model_copy(update=given))
        if "fail_next" not in given:
            self.remaining_failures, self._owed_since = owed, since
        if "seed" not in given:
            self._dice, self._returned = dice, returned

    def configure(self, config: FaultConfig) -> None:
        """Set the faults exactly; releases every hanging request."""
        self.config = config
        self.remaining_failures = config.fail_next
        self._owed_since += 1
        self._dice = random.Random(config.seed)
        self._returned = deque()
        self._released.set()
        self._released = asyncio.Event()

    def in_force(self) -> FaultConfig:
        """The configuration with ``fail_next`` the failures still owed."""
        if self.remaining_failures == self.config.fail_next:
            return self.config
        return self.config.model_copy(update={"fail_next": self.remaining_failures})

    def failure_status(self) -> int | None:
        """The status to fail an arriving request with, if any (fail-next first, then the dice)."""
        return self.take_failure().status

    def take_failure(self) -> Draw:
        """``failure_status``, with what ``give_back`` needs to return it."""
        if self.remaining_failures > 0:
            self.remaining_failures -= 1
            return Draw(self.config.fail_status, owed_since=self._owed_since)
        rate = self.config.error_rate
        if not rate:
            return Draw(None)
        roll = self._returned.popleft() if self._returned else self._dice.random()
        status = self.config.error_status if roll < rate else None
        return Draw(status, roll=roll, dice=self._dice)

    def give_back(self, draw: Draw) -> None:
        """Return what a request took that was then refused (its body too large): an
        owed failure is owed again, unless the owed failures were set anew since; a roll
        of the dice, failing or not, is the next arrival's, unless the dice were replaced.

        Kept, a roll was lost to a request answered 413: the answered requests no
        longer followed the seeded sequence, and one meant to fail never did.
        """
        if draw.owed_since is not None and draw.owed_since == self._owed_since:
            self.remaining_failures += 1
        elif draw.roll is not None and draw.dice is self._dice:
            self._returned.append(draw.roll)

    async def hang(self) -> bool:
        """Hold until the faults change (or ``hang_max_seconds``); ``False`` when the
        server's stop ended it first: the request is to be cut off."""
        return await self.stopping.hold(self.config.hang_max_seconds, self._released)


class FaultInjector:
    """Applies the stub's ``FaultState`` to every non-control request, and its body cap
    to every request."""

    def __init__(
        self,
        app: ASGIApp,
        state: FaultState,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        service: str = "stub",
    ) -> None:
        self.app = app
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.service = service  # named in its log lines: ``gateway demo``'s stubs share stderr

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        control = scope["path"].startswith("/_")
        if not control:
            self.state.requests += 1
        answer = _Answer(send)
        try:
            await self._capped(scope, receive, answer, control)
        except asyncio.CancelledError:
            # Only the server cancels a request: its shutdown timeout cutting off what the
            # stub does not end itself (a client's unfinished body; any held request on
            # a server not built by stub_server). A head and a closed connection, never
            # a whole answer.
            if not answer.started:
                await send(_CUT_OFF)
            raise

    async def _capped(self, scope: Scope, receive: Receive, send: Send, control: bool) -> None:
        if declared_too_large(scope, self.max_body_bytes):  # refused before it takes anything
            await self._refuse_too_large(scope, receive, send, control)
            return
        try:
            # Every route and every fault reads the body whole before it answers: a body
            # over the cap is found out before any answer has started.
            await self._serve(scope, capped(receive, self.max_body_bytes), send, control)
        except BodyTooLarge:
            await self._refuse_too_large(scope, receive, send, control)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, control: bool) -> None:
        config = self.state.config
        if control or not config.applies_to(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        # Decided now, on arrival: an owed failure or a roll of the dice is this request's,
        # whatever changes while it waits. A reset request takes neither (it never did).
        draw = Draw(None) if config.reset else self.state.take_failure()
        try:
            await self._fault(scope, receive, send, config, draw.status)
        except BodyTooLarge:
            self.state.give_back(draw)  # a refused request takes nothing from the faults
            raise

    async def _refuse_too_large(
        self, scope: Scope, receive: Receive, send: Send, control: bool
    ) -> None:
        if not control:  # control paths are never listed
            record_refusal(Request(scope, receive), BODY_TOO_LARGE)
        await too_large(self.max_body_bytes)(scope, receive, send)

    async def _fault(
        self, scope: Scope, receive: Receive, send: Send, config: FaultConfig, status: int | None
    ) -> None:
        if config.latency_ms and not await self.state.stopping.hold(config.latency_ms / 1000):
            await self._cut_off(scope, send)
        gone = False  # whether its client left while it hung
        if config.hang:
            # Recorded now: a hang released into service is recorded again by its route,
            # which reads the body again: the bytes read here are handed to it.
            body = await self._record(scope, receive, "hang")
            if body is None:
                return  # its client has gone: nothing to hold, nothing to answer
            if not await self.state.hang():
                await self._cut_off(scope, send)
            gone = await Request(scope, receive).is_disconnected()  # its body is read: safe
            receive = _replay(body, receive)
        if config.reset:
            if await self._record(scope, receive, "reset", gone=gone) is not None:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                log.info(
                    "fault_injected",
                    fault="reset",
                    service=self.service,
                    method=scope["method"],
                    path=scope["path"],
                )
                raise ConnectionDropped("fault: connection reset")
            return
        if status is not None:
            if await self._record(scope, receive, f"status {status}", gone=gone) is not None:
                await _send_error(send, status, config.retry_after)
            return
        if gone:  # listed as its route would list it, and not served
            await self._record(scope, receive, None, gone=True)
            return
        if config.slow_body_ms:
            pause = config.slow_body_ms / 1000
            send = _slow(send, config.slow_chunk_bytes, pause, self.state.stopping)
        await self.app(scope, receive, send)

    async def _cut_off(self, scope: Scope, send: Send) -> None:
        """End a request the stub held past its server's stop: a bare ``503`` head and
        the connection closed, as uvicorn's cancellation would, without one."""
        await send(_CUT_OFF)
        log.info("request_cut_off", service=self.service, method=scope["method"],
                 path=scope["path"], reason="stopping")  # fmt: skip
        raise ConnectionDropped("stopping: cut off")

    async def _record(
        self, scope: Scope, receive: Receive, fault: str | None, *, gone: bool = False
    ) -> bytes | None:
        """Count the fault (if any) and record the request at ``/_seen``; its body (read
        whole), ``None`` when its client has gone (recorded so: not to be answered)."""
        body = await record_fault(Request(scope, receive), fault, client_gone=gone)
        if fault is not None:  # once its body was read whole: one too large is no fault
            self.state.faulted += 1
        return body


def _replay(body: bytes, receive: Receive) -> Receive:
    """``receive`` for a request whose body was read already: that body, then the real one."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _send_error(send: Send, status: int, retry_after: int | None) -> None:
    body = orjson.dumps({"error": "injected fault", "status": status, "secret": "stack trace"})
    headers = [(b"content-type", b"application/json")]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _slow(send: Send, chunk: int, pause: float, stopping: Stopping) -> Send:
    """Send the body in small chunks with a pause before each (none once stopping)."""

    async def slow_send(message: Message) -> None:
        if message["type"] != "http.response.body":
            await send(message)
            return
        body: bytes = message.get("body", b"")
        more = message.get("more_body", False)
        for start in range(0, len(body), chunk):
            await stopping.pause(pause)
            last = start + chunk >= len(body)
            part = body[start : start + chunk]
            await send({"type": "http.response.body", "body": part, "more_body": more or not last})
        if not body:
            await send(message)

    return slow_send
