"""One SIGHUP handler per process, shared by everything that reloads or reopens on it.

asyncio keeps one handler per signal (``loop.add_signal_handler`` replaces the
last), so the key ring's reload and the decision log's reopen subscribe here
instead of installing their own: each gets called, in subscription order.
Signals are handled only on the main thread's loop; elsewhere (servers embedded
in tests, other platforms) ``on_sighup`` says so and calls nothing.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import structlog

log = structlog.get_logger("gateway.ops")

Callback = Callable[[], None]
_subscribers: list[Callback] = []
_installed: list[asyncio.AbstractEventLoop] = []


@contextmanager
def on_sighup(callback: Callback) -> Iterator[bool]:
    """Call ``callback`` on each SIGHUP while open; yields whether SIGHUP can be handled here."""
    handled = _install()
    if handled:
        _subscribers.append(callback)
    try:
        yield handled
    finally:
        if handled:
            _subscribers.remove(callback)
            if not _subscribers:
                _uninstall()


def _install() -> bool:
    loop = asyncio.get_running_loop()
    if loop in _installed:
        return True
    try:
        loop.add_signal_handler(signal.SIGHUP, _dispatch)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        # Not the main thread (embedded servers, tests) or no SIGHUP on this platform.
        return False
    _installed.append(loop)
    return True


def _uninstall() -> None:
    while _installed:
        loop = _installed.pop()
        if not loop.is_closed():
            loop.remove_signal_handler(signal.SIGHUP)


def _dispatch() -> None:
    for callback in list(_subscribers):
        try:
            callback()
        except Exception:  # one subscriber's failure must not stop the others
            log.exception("sighup_callback_failed", callback=getattr(callback, "__qualname__", ""))
