"""The ``--workers`` supervisor: uvicorn's, with a stop that never waits behind restarts.

uvicorn 0.54's ``Multiprocess`` queues every signal and handles the queue in order
every 0.5 s; each SIGHUP is a whole rolling restart (a new worker, ready, then the
old one drained, per worker: seconds each). A drill sent 30 SIGHUPs (a logrotate
``postrotate`` run for many files, a loop in a script) and then SIGTERM: the
supervisor restarted every worker again and again for minutes, serving all the
while, and saw the SIGTERM only when the queue reached it, far past any
orchestrator's grace period, whose SIGKILL then cut requests off mid-answer.

Here a stop (SIGINT, SIGTERM) waiting in the queue counts as ``should_exit`` at
once, so a restart in progress stops at its next check (a replacement not yet
ready is killed, the old worker keeps serving until the stop drains it), and the
SIGHUPs one poll finds are one restart: a restart begun after the last of them
reopens every file they asked for. Other signals keep uvicorn's handling, each as
often as it came (SIGTTIN adds one worker per signal).

Options weighed: setting ``should_exit`` inside the signal handler (a
``threading.Event.set`` there can deadlock with the main thread inside
``Event.wait``, which holds the same lock); patching uvicorn's module (every other
user of ``uvicorn.run`` in the process would get it); this subclass (chosen:
``gateway serve`` runs it in place of ``uvicorn.run``'s ``Multiprocess``, and its
checks are uvicorn's own ``should_exit`` reads).
"""

from __future__ import annotations

import signal
import threading
from socket import socket

import structlog
from uvicorn.config import Config
from uvicorn.supervisors.multiprocess import SIGNALS, Multiprocess

log = structlog.get_logger("gateway.ops")

STOP_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM})


class StopQueued(threading.Event):
    """``should_exit`` that also reads as set while a stop signal waits in ``queue``."""

    def __init__(self, queue: list[int]) -> None:
        super().__init__()
        self._queue = queue

    def is_set(self) -> bool:
        # Read without a lock: the signal handler only appends (atomic under the GIL).
        return super().is_set() or not STOP_SIGNALS.isdisjoint(self._queue)


class Supervisor(Multiprocess):
    """uvicorn's worker supervisor; a stop goes first and a burst of SIGHUPs is one restart."""

    def __init__(self, config: Config, sockets: list[socket]) -> None:
        super().__init__(config, sockets)
        self.should_exit = StopQueued(self.signal_queue)

    def handle_signals(self) -> None:
        queued = list(self.signal_queue)
        del self.signal_queue[: len(queued)]  # the handler only appends after them
        for sig in signals_to_handle(queued):
            handler = getattr(self, f"handle_{SIGNALS[sig].lower()}", None)
            if handler is not None:
                handler()
        hups = queued.count(signal.SIGHUP)
        if hups > 1 and not self.should_exit.is_set():
            log.info("sighup_restarts_coalesced", signals=hups, restarts=1)


def signals_to_handle(queued: list[int]) -> list[int]:
    """What one poll acts on: the first stop alone, else the queue with one SIGHUP."""
    for sig in queued:
        if sig in STOP_SIGNALS:
            return [sig]
    first_hup = queued.index(signal.SIGHUP) if signal.SIGHUP in queued else -1
    return [s for i, s in enumerate(queued) if s != signal.SIGHUP or i == first_hup]
