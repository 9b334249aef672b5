"""A saga: steps run in order; when one fails, the done ones are undone in reverse.

Each step is an action on one service and an optional compensation that takes
the action's result. Every start, success, failure and compensation is logged
(``saga_step``) with the corr_id bound by the edge, and traced: one span for the
saga, one per step and one per compensation under it (``app.core.tracing``).
A failed compensation is logged loudly and does not stop the others; the caller then gets the step's
error with a detail naming the steps it could not undo, if any.

A saga cancelled mid-step (uvicorn cancels the requests still running when
``ops.graceful_shutdown_seconds`` runs out) undoes its done steps too, and the
step in flight when its undo needs no answer, before the cancellation goes on:
the undo runs as a task of its own (``finish_undos``: the app's lifespan waits
for it, and for the rest of the cancelled request: its lock and key released,
its 503 sent, bounded, before it closes the service pools and Redis), so a
second cancellation does not stop it either. The undo of a *failed* step runs in
such a task too: a cancellation that arrives while it compensates is held until
the undo ends, as above (before, it ended the request at once: the engagement's
lock and the key were released while the undo still ran, so another gateway's
reopen or close, or the caller's retry of the same key, ran beside it). Weighed
against leaving the steps done (the close then stays half applied: findings
frozen, an engagement open) and against refusing to stop while a saga runs (a
supervisor kills the process anyway). For the same reason an undo is free of the
request's downstream deadline (``app.downstream.deadline``): a step that failed
because the deadline passed is undone all the same, each undo call bounded only by
its service's own timeouts and retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from app.core.errors import CircuitOpen, DownstreamError, GatewayError
from app.core.tracing import SERVICE, span
from app.downstream.deadline import lifted
from app.downstream.resilience import PoolExhausted

log = structlog.get_logger("gateway.saga")


@dataclass(frozen=True, slots=True)
class Step:
    """One action and its compensation (given the action's result).

    ``undo_when_unanswered``: the compensation needs no result (it is called with
    ``None``), so it also runs for this step when the step failed in a way that may
    have applied it: the service timed out, broke off, or answered 5xx or an invalid
    2xx (a ``DownstreamError`` other than ``CircuitOpen``). Compensations must then be
    idempotent: undoing what never happened is harmless, leaving done what happened is
    not.
    """

    name: str
    service: str
    action: Callable[[], Awaitable[Any]]
    compensate: Callable[[Any], Awaitable[None]] | None = None
    undo_when_unanswered: bool = False


class Saga:
    """Runs steps with compensation; ``run`` returns each step's result by name."""

    def __init__(self, name: str, steps: Sequence[Step]) -> None:
        self.name = name
        self.steps = tuple(steps)

    async def run(self) -> dict[str, Any]:
        with span(f"saga {self.name}", {"gateway.saga": self.name}):
            return await self._run()

    async def _run(self) -> dict[str, Any]:
        done: list[tuple[Step, Any]] = []
        for step in self.steps:
            log.info(
                "saga_step", saga=self.name, step=step.name, service=step.service, status="started"
            )
            try:
                with span(f"step {step.name}", self._attributes(step)):
                    result = await step.action()
            except GatewayError as exc:
                log.warning(
                    "saga_step", saga=self.name, step=step.name, status="failed", error=exc.code
                )
                if _maybe_applied(exc) and step.undo_when_unanswered:
                    done.append((step, None))  # undone first, like the last step done
                undo = _undo_task(self._compensate(done))
                try:
                    not_undone = await asyncio.shield(undo)
                except asyncio.CancelledError:
                    # Cancelled while undoing a failure: the request still ends after the
                    # undo (its lock and key released only then), unless cancelled again.
                    _finish_before_shutdown(asyncio.current_task())
                    await _wait_despite_cancellation(undo)
                    raise
                raise _failure(self.name, step, exc, not_undone) from None
            except asyncio.CancelledError:
                log.warning("saga_step", saga=self.name, step=step.name, status="cancelled")
                _finish_before_shutdown(asyncio.current_task())
                if step.undo_when_unanswered:  # its request may have been applied
                    done.append((step, None))
                await _undo_despite_cancellation(self._compensate(done))
                raise
            log.info("saga_step", saga=self.name, step=step.name, status="done")
            done.append((step, result))
        return {step.name: result for step, result in done}

    def _attributes(self, step: Step) -> dict[str, str]:
        return {"gateway.saga": self.name, "gateway.saga.step": step.name, SERVICE: step.service}

    async def _compensate(self, done: list[tuple[Step, Any]]) -> list[str]:
        """Undo in reverse order; the names of the steps whose undo failed.

        Free of the request's downstream deadline (``lifted``): a saga that failed
        because it ran out of time still undoes every step it did.
        """
        with lifted():
            return await self._undo(done)

    async def _undo(self, done: list[tuple[Step, Any]]) -> list[str]:
        failed: list[str] = []
        for step, result in reversed(done):
            if step.compensate is None:
                continue
            try:
                with span(f"compensate {step.name}", self._attributes(step)):
                    await step.compensate(result)
            except GatewayError as exc:
                failed.append(step.name)
                log.error(
                    "saga_step",
                    saga=self.name,
                    step=step.name,
                    status="compensation_failed",
                    error=exc.code,
                )
                continue
            log.info("saga_step", saga=self.name, step=step.name, status="compensated")
        return failed


# How long a stopping gateway waits for those undos after the drain, at most (a close's
# undo is three calls, each bounded by its service's timeouts and retries).
UNDO_ON_SHUTDOWN_SECONDS = 10.0
# Undo tasks of cancelled sagas, and the request tasks they ran in (which still release
# the engagement's lock and the key's claim, and answer 503, all after the undo):
# referenced here (the loop holds tasks weakly) and awaited by the lifespan before the
# service pools and Redis close. Each maps to its saga's request task, so the log counts
# sagas, not tasks (one cancelled close is two tasks: it logged ``sagas: 2``).
_UNDOING: dict[asyncio.Task[Any], asyncio.Task[Any]] = {}


def _finish_before_shutdown(
    task: asyncio.Task[Any] | None, request: asyncio.Task[Any] | None = None
) -> None:
    if task is not None:
        _UNDOING[task] = request or task
        task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    _UNDOING.pop(task, None)


def _undo_task(undo: Coroutine[object, object, list[str]]) -> asyncio.Task[list[str]]:
    """Run ``undo`` in a task of its own, which a cancellation of the caller does not
    stop (``finish_undos`` waits for it)."""
    task = asyncio.get_running_loop().create_task(undo)
    _finish_before_shutdown(task, asyncio.current_task())
    return task


async def _wait_despite_cancellation(undo: asyncio.Task[list[str]]) -> None:
    """Wait for ``undo`` to end unless cancelled again: the request ends (releasing the
    engagement's lock and the key's claim) only after its undo, so no other close or
    reopen, and no retry of the same key, runs while it undoes."""
    try:
        await asyncio.shield(undo)
    except asyncio.CancelledError:
        log.warning("saga_undo_detached")  # it goes on; finish_undos waits for it


async def _undo_despite_cancellation(undo: Coroutine[object, object, list[str]]) -> None:
    """Run ``undo`` to its end in a task of its own; wait for it unless cancelled again."""
    await _wait_despite_cancellation(_undo_task(undo))


async def finish_undos(within_seconds: float) -> None:
    """Wait (at most ``within_seconds``) for every saga cancelled mid-run: its undo, and
    the end of the request it ran in."""
    pending = dict(_UNDOING)
    if not pending:
        return
    log.info("saga_undo_waiting", sagas=len(set(pending.values())))
    _, late = await asyncio.wait(pending, timeout=within_seconds)
    if late:
        log.error("saga_undo_abandoned", sagas=len({pending[task] for task in late}))


def _maybe_applied(exc: GatewayError) -> bool:
    """The request may have reached the service and been applied, its answer lost or bad.

    A ``DownstreamError`` (timeout, cut connection, 5xx, invalid answer) but not an open
    breaker nor an exhausted pool (nothing was sent); a refusal (4xx) applied nothing.
    """
    return isinstance(exc, DownstreamError) and not isinstance(exc, CircuitOpen | PoolExhausted)


def _failure(saga: str, step: Step, exc: GatewayError, not_undone: list[str]) -> GatewayError:
    """The step's error, with a detail that says how far the saga was undone."""
    outcome = (
        f"could NOT undo {', '.join(not_undone)}; the other steps were undone"
        if not_undone
        else "earlier steps were undone"
    )
    detail = f"{saga} failed at step {step.name} ({step.service}); {outcome}."
    if isinstance(exc, DownstreamError):
        # A subclass with its own constructor (RetryableError) is rebuilt as the
        # nearest class that takes (service, detail, headers=): same code and status.
        kind = next(k for k in type(exc).__mro__ if _takes_service_detail(k))
        rebuilt: GatewayError = kind(exc.service, detail, headers=exc.headers)
        return rebuilt
    failed = (
        type(exc)(detail, headers=exc.headers)
        if type(exc).__init__ is GatewayError.__init__
        else exc
    )
    return failed


def _takes_service_detail(kind: type) -> bool:
    """Whether ``kind`` is built as ``DownstreamError`` is: ``(service, detail, headers=)``."""
    return getattr(kind, "__init__", None) is DownstreamError.__init__
