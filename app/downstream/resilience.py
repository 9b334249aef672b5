"""Retry and circuit-breaker policy for downstream calls: the one home of both.

Retries (tenacity) apply only when the request may be repeated (an idempotent
method, or a POST carrying an ``Idempotency-Key``, with a replayable body) and
only to failures marked retryable where they are raised: connect errors, read
timeouts before any response byte, and the configured 5xx statuses (502, 503,
504). Backoff is exponential with full jitter, never shorter than a
``Retry-After`` the service sent, bounded by attempts and by a deadline
(``stop_before_delay``), and by the inbound request's own deadline when it has one
(``app.downstream.deadline``): no retry starts whose wait would reach it. Pool
timeouts and open circuits are never retried.

The breaker (pybreaker, one per service) counts **requests, not attempts**: it
wraps one request with all its retries (``with breaker.calling():`` around the
``await``: pybreaker has no native asyncio and decorating a coroutine function
would count nothing), so ``fail_max`` means failed requests whatever
``retry.attempts`` is, and a request that succeeds on a retry is a success. Each
attempt first calls ``BreakerCall.admit``: the first enters the breaker call, a
retry meeting a breaker opened meanwhile fails fast. 4xx answers raise nothing
inside the block, so they are never failures; a pool timeout is excluded (our
saturation, not the service's fault), and so is an open circuit met by a retry
(the failure that opened it was counted), and so is a request its caller cut short
(a client that left mid-upload: the service answered nothing, neither way).
pybreaker lets every concurrent call through in half-open, so ``BreakerCall.admit``
admits at most ``half_open_max_calls`` trials and fails the rest fast with
``CircuitOpen``.
Transitions are logged and exported as a Prometheus gauge.

The reset timeout runs on the monotonic clock: pybreaker times it on the wall clock
(``datetime.now``), which NTP may step; ``_Storage.opened_at`` hands it the wall
time that lies the monotonic time since opening before now, so a step changes nothing.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import TracebackType
from typing import Any, TypeVar

import pybreaker
import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from app.core.config import BreakerSettings, RetrySettings
from app.core.errors import CircuitOpen, DownstreamError, DownstreamTimeout
from app.downstream.deadline import Deadline
from app.ops.metrics import count_breaker_transition, count_retry, set_breaker_state

log = structlog.get_logger("gateway.downstream")

T = TypeVar("T")
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class RetryableError(DownstreamError):
    """A 502 the retry policy may repeat (connect failure, retryable 5xx status)."""

    def __init__(self, service: str, detail: str, retry_after: float | None = None) -> None:
        super().__init__(service, detail)
        self.retry_after = retry_after


class RetryableTimeout(DownstreamTimeout):
    """A 504 the retry policy may repeat: connect timeout, or no response byte in time."""

    retry_after: float | None = None


class PoolExhausted(DownstreamTimeout):
    """No pooled connection in time: our saturation; never retried, never a breaker failure."""


class BodyTimeout(DownstreamTimeout):
    """An answer's body stalled after its head, where a streamed call's deadline ends: the
    service's timeout, never the request's deadline's (``DownstreamClient._bounded``)."""


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a ``Retry-After`` field (delta-seconds or HTTP-date), else ``None``."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - (now or datetime.now(UTC))).total_seconds())


def may_retry(method: str, has_idempotency_key: bool, replayable_body: bool) -> bool:
    """Only requests that may be repeated: idempotent, or keyed POST, with a replayable body."""
    if not replayable_body:
        return False
    return method.upper() in IDEMPOTENT_METHODS or (
        method.upper() == "POST" and has_idempotency_key
    )


class RetryPolicy:
    """Builds the tenacity controller for one call to one service."""

    def __init__(self, service: str, settings: RetrySettings) -> None:
        self.service = service
        self.settings = settings
        # Attempt 2 already waited one backoff step, so tenacity's sequence starts one higher.
        self._jitter = wait_random_exponential(
            multiplier=settings.backoff_initial_seconds * 2, max=settings.backoff_max_seconds
        )

    async def run(
        self,
        attempt: Callable[[int], Awaitable[T]],
        enabled: bool,
        deadline: Deadline | None = None,
    ) -> T:
        """Run ``attempt(1)``; when it fails retryably and retries are enabled, retry it.

        ``deadline`` (the inbound request's): no retry starts whose wait would reach it.

        The first attempt runs bare: driving it through tenacity costs about 150 us
        CPU a call (measured with bench/micro_transport.py), paid on every request.
        Attempts 2..n are driven by tenacity, after the first failure's own backoff.
        """
        started = time.monotonic()
        try:
            return await attempt(1)
        except (RetryableError, RetryableTimeout) as exc:
            if not enabled or self.settings.attempts < 2:
                raise
            first = exc
        jitter = random.uniform(0, self._first_backoff())  # noqa: S311 (backoff jitter, not crypto)
        delay = max(jitter, _retry_after_of(first) or 0.0)
        if not self._may_wait(first, delay, time.monotonic() - started, deadline):
            raise first
        self._record_retry(1, delay, first)
        await asyncio.sleep(delay)
        async for retry in self.controller(time.monotonic() - started, deadline):
            with retry:
                return await attempt(retry.retry_state.attempt_number + 1)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    def _first_backoff(self) -> float:
        return min(self.settings.backoff_max_seconds, self.settings.backoff_initial_seconds)

    def _may_wait(
        self, error: BaseException, delay: float, elapsed: float, deadline: Deadline | None
    ) -> bool:
        wanted = _retry_after_of(error)
        if wanted is not None and wanted > self.settings.max_retry_after_seconds:
            return False
        if deadline is not None and not deadline.allows_wait(delay):
            return False
        return elapsed + delay < self.settings.deadline_seconds

    def controller(self, elapsed: float = 0.0, deadline: Deadline | None = None) -> AsyncRetrying:
        """Tenacity for attempts 2..n: re-raises the last error, bounded by the deadlines."""
        return AsyncRetrying(
            retry=retry_if_exception(_is_retryable),
            stop=(
                stop_after_attempt(self.settings.attempts - 1)
                | stop_before_delay(max(0.0, self.settings.deadline_seconds - elapsed))
                | stop_when(self._retry_after_too_long)
                | stop_when(lambda state: _past(deadline, state))
            ),
            wait=self._wait,
            before_sleep=self._log_retry,
            reraise=True,
        )

    def _wait(self, state: RetryCallState) -> float:
        delay = float(self._jitter(state))
        return max(delay, _retry_after(state) or 0.0)

    def _retry_after_too_long(self, state: RetryCallState) -> bool:
        wanted = _retry_after(state)
        return wanted is not None and wanted > self.settings.max_retry_after_seconds

    def _log_retry(self, state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        self._record_retry(state.attempt_number + 1, state.upcoming_sleep, error)

    def _record_retry(self, attempt: int, delay: float, error: BaseException | None) -> None:
        count_retry(self.service)
        log.info(
            "downstream_retry",
            service=self.service,
            attempt=attempt,
            delay_s=round(delay, 3),
            error=getattr(error, "code", type(error).__name__),
        )


class stop_when(stop_base):  # noqa: N801 (tenacity's own stop classes are lower case)
    """Stop when a predicate on the retry state holds."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate(retry_state)


def _past(deadline: Deadline | None, state: RetryCallState) -> bool:
    """The wait before the next attempt would reach the request's deadline."""
    return deadline is not None and not deadline.allows_wait(state.upcoming_sleep)


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, RetryableError | RetryableTimeout)


def _retry_after(state: RetryCallState) -> float | None:
    return _retry_after_of(state.outcome.exception() if state.outcome else None)


def _retry_after_of(error: BaseException | None) -> float | None:
    value = getattr(error, "retry_after", None)
    return float(value) if value is not None else None


class _TransitionLog(pybreaker.CircuitBreakerListener):
    """Logs and exports every state change of one breaker."""

    def __init__(self, service: str) -> None:
        self.service = service

    def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
        old = getattr(old_state, "name", None)
        if old == new_state.name:
            # pybreaker opens an open breaker again when calls admitted before it opened
            # fail after (50 cancelled at shutdown: 45 "open -> open" warnings): no change.
            return
        count_breaker_transition(self.service, new_state.name)
        log.warning(
            "breaker_transition",
            service=self.service,
            from_state=old,
            to_state=new_state.name,
            failures=cb.fail_counter,
        )


def _not_a_failure(exc: BaseException) -> bool:
    """Only the service's own failures count; a call cut by our deadline counts too.

    pybreaker counts an excluded exception as a success (the failure count reset): right
    for an answer the service gave (a 4xx), wrong for a call that sent nothing, which
    ``BreakerCall`` ends without pybreaker counting it at all (``_Storage.neutral``).
    """
    return not isinstance(exc, DownstreamError | asyncio.CancelledError)


def _unjudged(exc: BaseException | None) -> bool:
    """The call ended without the service being judged: it sent nothing (no free
    connection, a later attempt refused), or the caller's side cut the request short
    (an upload whose client left mid-body, or whose body failed its digest or size
    check: raised by the body as it streams). pybreaker would count the latter as a
    success: a client leaving mid-upload reset the failure count, and closed a
    half-open breaker whose service had answered nothing. A cancellation (the
    overview's deadline, a shutdown) stays a failure (``_not_a_failure``)."""
    if exc is None:
        return False
    if isinstance(exc, PoolExhausted | CircuitOpen):
        return True
    return not isinstance(exc, DownstreamError | asyncio.CancelledError)


class _Storage(pybreaker.CircuitMemoryStorage):
    """pybreaker's in-memory state, with a mode in which nothing it does is kept.

    pybreaker counts every call it ends as a success or a failure. A call that sent
    nothing (no free connection, or refused at a later attempt's admission) is neither:
    counted a success, a pool timeout reset the failure count (an audit: a hung service
    behind a full pool never opened its breaker). And a call admitted before the breaker
    opened that ends after changes nothing (pybreaker opened it again, moving the time
    it admits a trial later). ``neutral`` makes such an end leave every count, the
    state and the opening time as they were.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self.neutral = False
        self._clock = clock
        self.opened_wall: datetime | None = None  # when it opened, as shown to people
        self.opened_mono: float | None = None  # the same moment on ``clock``

    def open_for(self) -> float | None:
        """Seconds on the monotonic clock since the breaker last opened (``None``: never)."""
        return None if self.opened_mono is None else self._clock() - self.opened_mono

    def increment_counter(self) -> None:
        if not self.neutral:
            super().increment_counter()

    def reset_counter(self) -> None:
        if not self.neutral:
            super().reset_counter()

    def increment_success_counter(self) -> None:
        if not self.neutral:
            super().increment_success_counter()

    def reset_success_counter(self) -> None:
        if not self.neutral:
            super().reset_success_counter()

    @property
    def state(self) -> str:
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        if not self.neutral:
            self._state = state

    @property
    def opened_at(self) -> datetime | None:
        """For pybreaker's ``now < opened_at + reset_timeout``: now less the monotonic
        time since opening, so a step of the wall clock (NTP) neither holds the breaker
        open for the step's length (backwards) nor ends the timeout early (forwards)."""
        since = self.open_for()
        return None if since is None else datetime.now(UTC) - timedelta(seconds=since)

    @opened_at.setter
    def opened_at(self, value: datetime) -> None:
        if not self.neutral:
            self.opened_wall, self.opened_mono = value, self._clock()


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """What ``GET /admin/breakers`` and readiness show of one breaker."""

    service: str
    state: str
    failures: int
    fail_max: int
    reset_timeout_seconds: float
    half_open_max_calls: int
    trials_in_flight: int
    opened_at: datetime | None
    retry_after_seconds: int | None


class BreakerCall:
    """One breaker call of one request: ``async with breaker.guard():`` or ``.request()``.

    ``guard()`` admits the call on entering the block; ``request()`` leaves it to the
    request's first attempt (``admit()``), so a refusal happens inside that attempt's
    span and log line. A later attempt's ``admit()`` passes only if the call is still
    its request's: not if the breaker opened meanwhile, or went half-open for others.
    """

    # A plain class, not an asynccontextmanager: it runs on every downstream request.

    __slots__ = ("_breaker", "_calling", "_eager", "_sent_failure", "_trial")

    def __init__(self, breaker: ServiceBreaker, eager: bool = True) -> None:
        self._breaker = breaker
        self._eager = eager
        self._trial = False
        self._calling: AbstractContextManager[Any] | None = None
        self._sent_failure: BaseException | None = None  # an attempt sent that failed

    def failed(self, exc: BaseException) -> None:
        """An attempt of this request failed (``DownstreamClient``: before its retry)."""
        if not isinstance(exc, PoolExhausted | CircuitOpen):  # those sent nothing
            self._sent_failure = exc

    async def __aenter__(self) -> BreakerCall:
        if self._eager:
            self.admit()
        return self

    def admit(self) -> None:
        """Enter the breaker call (first attempt) or check it still holds; else ``CircuitOpen``."""
        owner = self._breaker
        if self._calling is not None:
            state = owner.state
            ours = state == pybreaker.STATE_CLOSED or (
                self._trial and state != pybreaker.STATE_OPEN
            )
            if not ours:
                raise owner._open_error()
            return
        trial = owner.state != pybreaker.STATE_CLOSED
        if trial and owner._trials >= owner.settings.half_open_max_calls:
            raise owner._open_error()
        calling = owner._breaker.calling()
        try:
            calling.__enter__()
        except pybreaker.CircuitBreakerError:
            raise owner._open_error() from None
        owner._trials += trial
        self._trial, self._calling = trial, calling

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        owner = self._breaker
        if self._calling is None:
            return False  # never admitted: refused (not a failure), or no attempt ran
        storage = owner._storage
        if isinstance(exc, PoolExhausted | CircuitOpen) and self._sent_failure is not None:
            # The last attempt sent nothing, an earlier one was sent and failed: the
            # request failed (a hung service behind a full pool: the retry finds no
            # free connection), and counts so.
            exc = self._sent_failure
            kind, tb = type(exc), exc.__traceback__
        admitted_in = pybreaker.STATE_HALF_OPEN if self._trial else pybreaker.STATE_CLOSED
        if _unjudged(exc) or storage.state != admitted_in:
            # Nothing sent (no free connection; a later attempt refused), the caller cut
            # its own request short, or the breaker left the state this call was
            # admitted in (opened by others; a trial's breaker closed or reopened by
            # another trial): not counted. Ended as a
            # success (pybreaker's path without a state change of its own: it closes
            # nothing, as the success counter does not move) while the storage keeps
            # nothing of it; the exception propagates.
            storage.neutral = True
            try:
                self._calling.__exit__(None, None, None)
            finally:
                storage.neutral = False
                owner._trials -= self._trial
            return False
        try:
            return bool(self._calling.__exit__(kind, exc, tb))
        except pybreaker.CircuitBreakerError:
            raise owner._open_error() from None
        finally:
            owner._trials -= self._trial


class ServiceBreaker:
    """A pybreaker breaker used correctly under asyncio, with bounded half-open trials."""

    def __init__(
        self, service: str, settings: BreakerSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.service = service
        self.settings = settings
        self._storage = _Storage(clock)
        self._breaker = pybreaker.CircuitBreaker(
            fail_max=settings.fail_max,
            reset_timeout=settings.reset_timeout_seconds,
            success_threshold=settings.success_threshold,
            exclude=[_not_a_failure],
            listeners=[_TransitionLog(service)],
            name=service,
            throw_new_error_on_trip=False,
            state_storage=self._storage,
        )
        self._trials = 0
        set_breaker_state(service, pybreaker.STATE_CLOSED)

    @property
    def state(self) -> str:
        return str(self._breaker.current_state)

    def guard(self) -> BreakerCall:
        """Run the block as one breaker call; ``CircuitOpen`` (503) when it may not run."""
        return BreakerCall(self)

    def request(self) -> BreakerCall:
        """One request's breaker call, admitted by its first attempt's ``admit()``."""
        return BreakerCall(self, eager=False)

    def _open_error(self) -> CircuitOpen:
        seconds = self.retry_after() or 1
        return CircuitOpen(
            self.service,
            f"The {self.service} service is unavailable; retry later.",
            headers={"retry-after": str(seconds)},
        )

    def _open_for(self) -> float | None:
        """Seconds until an open breaker admits a trial (0 or less: the next call is one)."""
        elapsed = self._storage.open_for()
        if self.state != pybreaker.STATE_OPEN or elapsed is None:
            return None
        return self.settings.reset_timeout_seconds - elapsed

    def retry_after(self) -> int | None:
        """Whole seconds until the breaker admits a trial call, when it is open."""
        remaining = self._open_for()
        return None if remaining is None else max(1, math.ceil(remaining))

    def snapshot(self) -> BreakerSnapshot:
        """The state a request would meet now: an open breaker past its timeout is half-open.

        pybreaker moves to half-open only when a call arrives; the snapshot does not wait.
        """
        remaining = self._open_for()
        is_open = remaining is not None and remaining > 0
        state = pybreaker.STATE_HALF_OPEN if remaining is not None and not is_open else self.state
        return BreakerSnapshot(
            service=self.service,
            state=state,
            failures=int(self._breaker.fail_counter),
            fail_max=self.settings.fail_max,
            reset_timeout_seconds=self.settings.reset_timeout_seconds,
            half_open_max_calls=self.settings.half_open_max_calls,
            trials_in_flight=self._trials,
            opened_at=self._storage.opened_wall if is_open else None,
            retry_after_seconds=self.retry_after() if is_open else None,
        )
