"""The ``--workers`` supervisor's signal queue: a stop goes first, SIGHUPs are one restart."""

from __future__ import annotations

import signal

from app.ops.supervisor import StopQueued, signals_to_handle

HUP, TERM, INT, TTIN = signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGTTIN


def test_a_stop_anywhere_in_the_queue_is_handled_alone() -> None:
    assert signals_to_handle([HUP, HUP, TTIN, TERM, HUP]) == [TERM]
    assert signals_to_handle([INT, TERM]) == [INT]


def test_sighups_one_poll_finds_are_one_restart() -> None:
    assert signals_to_handle([HUP, HUP, HUP]) == [HUP]
    assert signals_to_handle([TTIN, HUP, TTIN, HUP]) == [TTIN, HUP, TTIN]  # TTIN as often as sent
    assert signals_to_handle([]) == []


def test_should_exit_reads_as_set_while_a_stop_waits_in_the_queue() -> None:
    queue: list[int] = [HUP]
    should_exit = StopQueued(queue)
    assert not should_exit.is_set()
    queue.append(TERM)  # as the signal handler does, mid-restart
    assert should_exit.is_set()
    queue.clear()
    assert not should_exit.is_set()
    should_exit.set()
    assert should_exit.is_set()
