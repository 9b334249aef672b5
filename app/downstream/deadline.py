"""One deadline per inbound request for its downstream work: attempts, backoffs, services.

A typed route's workflow (findings, overview, close, the admin reopen) opens ``within(seconds)``
(``orchestration.downstream_deadline_seconds``, 30 s by default); every
``DownstreamClient.call`` made inside it, in tasks it starts too (the overview's
branches copy the context), is bounded by the same instant:

- no attempt starts once it has passed (``504 gateway_timeout``, nothing sent, no
  breaker call), and no retry starts whose backoff would reach it (the last
  attempt's own error is raised, as when a wait would cross ``retry.deadline_seconds``);
- an attempt in flight when it passes is cancelled there (``504 gateway_timeout``,
  the error a read timeout gives), whatever phase it is in: a pool wait, connect,
  the upload, the head, or a body that drips a byte just inside every read timeout.

Without it one call could hold a caller ``retry.deadline_seconds`` (retries start
until then) plus one whole attempt (``pool_timeout + connect_timeout +
read_timeout``, a pause of ``read_timeout`` between body bytes with no total): 5 +
1 + 1 + 5 = 12 s with the defaults, per call, and a close makes five calls in a
row (about a minute). A dripping body was bounded by nothing but ``max_answer_bytes``.

Options weighed for how an attempt is cut: an ``asyncio.timeout`` around the
attempt, set to what is left (chosen: one bound over every phase, the same
cancellation the overview's deadline and a shutdown already use, so the transports
are known to give their connection up cleanly), against lowering each httpx
timeout (connect, read, write, pool) to what is left (each phase would stop in
time, but not their sum, and the read timeout is a pause between bytes, so a
dripping body would still run on; a streamed answer would keep the cut read
timeout for its whole body). The cost: an attempt cut while it waits for a pooled
connection counts as a failure of the service's breaker, as a cancellation by the
overview's deadline does.

On the native transport (``app.downstream.http1``, the default) a buffered call is
not wrapped in that timeout: the request carries the deadline (``DEADLINE``), each
phase's own timeout is cut to what is left (pool wait, connect, upload) and the read
timer the exchange arms anyway also ends it at the deadline, head and body, so no
timer is added per attempt (the ``asyncio.timeout`` cost about 1.3% of a typed
request's instructions under load). A timeout the transport raises once the deadline
has passed is the deadline's 504; a pool wait it cut is not a breaker failure (our
saturation, as ever). A streamed answer (``call(stream=True)``) is bounded the same
way up to its head only: the transport drops the deadline from the read timer once
the head is in, so the body is bounded per pause by ``read_timeout`` alone. Other
transports keep the ``asyncio.timeout`` (around the attempt, which for a streamed
answer ends at its head).

Options weighed for where it holds: a per-service ``deadline`` on each call
(bounds one call only: a close of five calls, or an overview of three, still adds
them up) against one per inbound request in a context variable (chosen: the
budget the caller sees, and calls need no new argument). A context variable
reaches tasks started inside the block: the saga's undo runs ``lifted()``, so a
close that ran out of time still undoes its steps to the end (each undo call
bounded by its service's own timeouts and retry window, as before): a half-done
close is worse than a late answer.

The admin reopen (``app.workflows.engagement_state.ReopenService``) is bounded too,
and needs no undo: its steps are the engagements service's reopen, the findings
service's unfreeze, then the closed fact dropped from the engagement state, and only
that last step (a Redis write, which no deadline cuts) lets writes through again. A
cut (504) therefore stops at or before the unfreeze, with the fact still in place:
the engagement stays read-only on every gateway, the state any failed step of the
reopen already left (the services perhaps reopened or unfrozen, which grants
nothing), and sending the reopen again completes it (both calls are idempotent).
Weighed against an undo like the close's (close the engagement on the service again,
refreeze the findings, run ``lifted()``): two more calls that can fail and leave the
same mixed state, a second close stamped on the service, and the admin's next step
is to send the reopen again anyway. Unbounded, its two calls (unkeyed POSTs, so not
retried) could hold the admin for two whole attempts, and a dripping answer for ever.

A pass-through request without a body is bounded by it up to the answer's head
(retries included); its streamed answer's body is not (a download may rightly take
long; bounded per pause by ``read_timeout`` and by ``edge.send_timeout_seconds``),
nor is a request with a streamed body, whose time to the head includes the caller's
own upload pace and which is sent once (``app.workflows.passthrough`` weighs it).
Settings refuse a deadline below one attempt of any service (``connect_timeout +
read_timeout``), which would cut every slow answer before the service's own timeout
had a say.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass

from app.core.errors import DownstreamTimeout

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Deadline:
    """An instant on ``clock`` by which an inbound request's downstream work must end."""

    ends_at: float
    clock: Clock = time.monotonic

    @classmethod
    def after(cls, seconds: float, clock: Clock = time.monotonic) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        """Seconds left, never below 0."""
        return max(0.0, self.ends_at - self.clock())

    def allows_wait(self, seconds: float) -> bool:
        """Whether a wait of ``seconds`` (a backoff) still leaves time for an attempt."""
        return seconds < self.remaining()


_CURRENT: ContextVar[Deadline | None] = ContextVar("gateway_downstream_deadline", default=None)


def current() -> Deadline | None:
    """The deadline downstream calls made now are bounded by, if any."""
    return _CURRENT.get()


class within:  # noqa: N801  (a context manager used like a function: ``with within(s):``)
    """Bound downstream calls in the block by ``seconds`` from now (``None``: unchanged).

    An enclosing deadline that ends sooner still holds: a block never extends it. A
    class rather than a ``@contextmanager`` generator: every typed request opens one,
    and the generator's machinery cost about twice its own work.
    """

    __slots__ = ("_clock", "_seconds", "_token")

    def __init__(self, seconds: float | None, clock: Clock = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._token: Token[Deadline | None] | None = None

    def __enter__(self) -> Deadline | None:
        if self._token is not None:
            # One token per instance: entered again, the outer exit would find none and
            # leave the inner deadline set after its block (a generator refused this too).
            raise RuntimeError("within() is already entered; open a new one")
        outer = _CURRENT.get()
        if self._seconds is None:
            return outer
        mine = Deadline(self._clock() + self._seconds, self._clock)
        chosen = outer if outer is not None and outer.ends_at <= mine.ends_at else mine
        self._token = _CURRENT.set(chosen)
        return chosen

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _CURRENT.reset(self._token)
            self._token = None


@contextmanager
def lifted() -> Iterator[None]:
    """No deadline in the block: a saga's undo runs to its end however late it is."""
    token = _CURRENT.set(None)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def exceeded(service: str) -> DownstreamTimeout:
    """The 504 of a call cut (or never started) by its request's deadline."""
    return DownstreamTimeout(
        service, f"The {service} service did not answer within the request's deadline."
    )
