"""structlog set-up: JSON lines by default, a console renderer on a TTY.

``logcontext.merge`` comes first so every line carries what the edge bound
(``corr_id``) and what later stages added (``subject``, ``engagement``).

The gateway's own loggers are structlog-native: a level-filtering bound logger
(a disabled level costs one method call) rendering with orjson straight to bytes
on stderr. Routing them through the standard library cost about 56 µs a line
(LogRecord, handler, formatter) against about 10 here, and every request writes
three lines (edge, decision, downstream) — see bench/README.md. Standard-library
loggers (uvicorn, httpx) still go through a ``ProcessorFormatter`` with the same
chain, so every line on stderr has one shape.

Trade-off: the stdlib bridge would let extra ``logging`` handlers (syslog, files)
see the gateway's events; the native path writes JSON lines to stderr only, which
is where a container platform collects them. Route elsewhere at the platform.
The one exception is the decision log: ``log.decisions.file`` gives the lines of
the ``gateway.decision`` logger a file of their own (``DecisionSink``).

With tracing on, every line also carries the current span's ``trace_id`` and
``span_id`` (``app.core.tracing.add_trace_ids``; one attribute read when off).

The lines a loop tick logs leave in one ``write`` at the end of that tick
(``LineBuffer``): see its docstring for why and what it keeps.
"""

from __future__ import annotations

import asyncio
import atexit
import errno
import logging
import os
import re
import sys
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, BinaryIO, Literal

import orjson
import structlog
from structlog._config import BoundLoggerLazyProxy
from structlog.typing import EventDict, Processor, WrappedLogger

from app.core import logcontext
from app.core.errors import ConfigError
from app.core.observability_settings import DecisionLogSettings
from app.core.sighup import on_sighup
from app.core.tracing import add_trace_ids

DECISION_LOGGER = "gateway.decision"
# The logger of OpenTelemetry's W3C ``tracestate`` parser (``TraceState.from_header``).
OTEL_TRACESTATE_LOGGER = "opentelemetry.trace.span"
# Decision lines are the audit trail: written whatever ``log.level`` says (a WARNING
# level silenced every allow and deny, in the decision file too); ``log.decisions``
# alone says where they go.
_DECISION_WRAPPER = structlog.make_filtering_bound_logger(logging.INFO)


class LazyLogger(BoundLoggerLazyProxy):
    """structlog's lazy logger proxy, its logging methods defined on the class.

    The proxy (what ``structlog.get_logger`` returns) serves ``log.info`` from
    ``__getattr__``, which Python calls only after the ordinary lookup failed: every
    line first built and discarded an ``AttributeError`` with its formatted message
    (about 0.6 µs a line, against 0.04 µs for a bound logger's method). Here the
    level methods exist, so the lookup succeeds and calls the same ``bind()`` the
    proxy's ``__getattr__`` would, configuration changes included (``bind()`` builds
    from the current configuration until one with ``cache_logger_on_first_use``
    caches it). Any other attribute still goes through ``__getattr__``.
    """

    def debug(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        logger: Any = self.bind()
        return logger.debug(event, *args, **kw)

    def info(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        logger: Any = self.bind()
        return logger.info(event, *args, **kw)

    def warning(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        logger: Any = self.bind()
        return logger.warning(event, *args, **kw)

    def error(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        logger: Any = self.bind()
        return logger.error(event, *args, **kw)

    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        logger: Any = self.bind()
        return logger.exception(event, *args, **kw)


def get_logger(name: str) -> Any:
    """``structlog.get_logger(name)``, as a ``LazyLogger``: for loggers of the hot path."""
    return LazyLogger(None, logger_factory_args=(name,))


def decision_logger() -> Any:
    """The ``gateway.decision`` logger: the configured chain, at INFO whatever the level."""
    return LazyLogger(None, wrapper_class=_DECISION_WRAPPER, logger_factory_args=(DECISION_LOGGER,))


def _orjson_dumps(obj: object, default: object = None) -> str:
    return orjson.dumps(obj, default=str).decode()


def _orjson_bytes(obj: object, default: object = None) -> bytes:
    return orjson.dumps(obj, default=str)


def _to_bytes(logger: WrappedLogger, method: str, rendered: EventDict | str) -> bytes:
    return str(rendered).encode("utf-8", "replace")


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# A string value holding any of these is written as its repr by ConsoleRenderer (26.1).
_REPRED_BY_CONSOLE = frozenset(" \t=\r\n\"'")


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]  # "\n", "\x1b", "\x9b"


def escape_controls(logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
    """Control characters as Python escapes, where the console renderer writes them raw.

    ``ConsoleRenderer`` writes the event (a standard-library record's message, with its
    arguments interpolated) raw, and a string value raw unless it holds a space, tab,
    ``=``, a quote, CR or LF (then its ``repr``, which escapes every control): a message
    with a line break could forge a whole log line on a terminal, and an escape sequence
    in either could rewrite what the terminal shows. Those are escaped here; a value the
    renderer will ``repr`` is left to it (escaping it too would double the backslashes).
    The JSON renderer escapes everything itself. An exception's traceback, formatted by
    the renderer from ``exc_info``, keeps its lines.
    """
    for key, value in event_dict.items():
        if type(value) is not str or not _CONTROL.search(value):
            continue
        if key == "event" or not _REPRED_BY_CONSOLE.intersection(value):
            event_dict[key] = _CONTROL.sub(_escaped, value)
    return event_dict


# structlog's add_log_level: "warn" is the stdlib's alias, exception() logs at error.
_LEVEL_OF_METHOD = {"warn": "warning", "exception": "error"}


class LevelNameTime:
    """``add_log_level``, ``add_logger_name`` and ``TimeStamper(fmt="iso", utc=True)`` in one.

    The gateway writes three lines a request, so each processor call counts: this
    adds the same keys, in the same order, with the same values (the timestamp's
    date and time of day are formatted once a second, not on every line).
    """

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self, logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["level"] = _LEVEL_OF_METHOD.get(method_name, method_name)
        event_dict["logger"] = logger.name
        event_dict["timestamp"] = self.timestamp(time.time_ns())
        return event_dict

    def timestamp(self, now_ns: int) -> str:
        """``datetime.fromtimestamp(now, UTC).isoformat()`` with ``Z`` for ``+00:00``."""
        second, nanos = divmod(now_ns, 1_000_000_000)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        micros = nanos // 1000
        return f"{self._prefix}.{micros:06d}Z" if micros else f"{self._prefix}Z"


# Past this many bytes pending, a tick's lines are written at once.
LINE_BUFFER_LIMIT = 64 * 1024


class LineBuffer:
    """A file's log lines, written once per event-loop tick rather than once a line.

    Every request logs at least two lines (its decision, its summary); written one
    at a time, each cost a ``write`` and a ``flush`` of ``sys.stderr`` (two system
    calls a request, about 5 µs each in the kernel on the bench machine, plus the
    reader's wake-up). Here a line logged on a thread that runs an event loop is
    queued, and the first line of a tick schedules (``call_soon``) one ``write`` of
    all of them, at the end of that tick; a line logged anywhere else (a thread
    without a loop, start-up, exit) is written at once, after whatever was queued,
    so the file keeps the order in which lines were logged.

    What it keeps: a decision line is logged before its answer is written, and the
    edge (``app.edge.server.CoalescingTransport``) writes the lines queued so far
    before it sends any answer, so the lines reach the file no later than the
    answer reaches the socket. Standard-library records (uvicorn, httpx, asyncio)
    go through the same buffer (``BufferedStreamHandler``), so the order in which
    lines were logged is the order on stderr. Lines are lost only if the process
    dies by ``SIGKILL`` (or a crash) within the tick that logged them; they are
    written at exit, and past ``LINE_BUFFER_LIMIT`` bytes at once. The server's own
    lines (logger ``uvicorn.error``: started, shutting down, finished; rare) are
    written at once, with what was queued before them: on ``SIGTERM`` uvicorn
    restores the default handler and raises the signal again once it has stopped,
    and the process then dies of it without running ``atexit``, which lost the last
    tick's lines (``Application shutdown complete.``, ``Finished server process``).
    The decision file (``DecisionSink``) is not buffered: it is written before the
    line reaches this buffer.

    Weighed against a background writer thread (the loop would never wait for a
    slow reader of stderr, but every line would cross threads, and a queue would
    have to be bounded and its overflow dropped or waited for): a tick's worth of
    lines is small, and the write stays on the loop's thread, as it was.
    """

    def __init__(self, file: BinaryIO) -> None:
        self.file = file
        # Re-entrant: a line logged by a signal handler that interrupts a write on
        # this thread is written, not a deadlock.
        self._lock = threading.RLock()
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled: asyncio.AbstractEventLoop | None = None

    def add(self, line: bytes, at_once: bool = False) -> None:
        """Queue ``line`` (newline included) on a loop's thread; else (or ``at_once``)
        write it now, after what was queued."""
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        with self._lock:
            self._pending.append(line)
            self._size += len(line)
            if loop is None or at_once or self._size > LINE_BUFFER_LIMIT:
                self._write_pending()
                return
            if self._scheduled is not loop:  # first line of this tick (on this loop)
                self._scheduled = loop
                loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write what is queued (a loop callback; also at exit)."""
        with self._lock:
            self._write_pending()

    def _write_pending(self) -> None:
        self._scheduled = None
        if not self._pending:
            return
        lines, self._pending, self._size = self._pending, [], 0
        try:
            self.file.write(lines[0] if len(lines) == 1 else b"".join(lines))
            self.file.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere to write them
            pass

    def discard(self) -> None:
        """Forget what is queued (a forked child: its parent writes those lines)."""
        self._pending, self._size, self._scheduled = [], 0, None
        self._lock = threading.RLock()


class BufferedBytesLogger(structlog.BytesLogger):
    """structlog's ``BytesLogger`` (its name, its methods) writing through a ``LineBuffer``."""

    __slots__ = ("_buffer",)

    def __init__(self, buffer: LineBuffer, name: str | None = None) -> None:
        super().__init__(buffer.file, name=name)
        self._buffer = buffer

    def msg(self, message: bytes) -> None:
        self._buffer.add(message + b"\n")

    def __deepcopy__(self, memodict: dict[str, object]) -> BufferedBytesLogger:
        return BufferedBytesLogger(self._buffer, name=self.name)

    log = debug = info = warn = warning = msg
    fatal = failure = err = error = critical = exception = msg


SERVER_LOGGER = "uvicorn.error"


class BufferedStreamHandler(logging.Handler):
    """A standard-library handler writing formatted records through a ``LineBuffer``."""

    def __init__(self, buffer: LineBuffer) -> None:
        super().__init__()
        self.buffer = buffer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # logging's contract: report, never raise
            self.handleError(record)
            return
        at_once = record.name == SERVER_LOGGER  # see LineBuffer: the last lines before a signal
        self.buffer.add(line.encode("utf-8", "replace") + b"\n", at_once)


class BufferedBytesLoggerFactory:
    """``logger_factory`` for structlog: named ``BufferedBytesLogger``s on one buffer."""

    def __init__(self, buffer: LineBuffer) -> None:
        self.buffer = buffer

    def __call__(self, *args: Any) -> BufferedBytesLogger:
        return BufferedBytesLogger(self.buffer, name=args[0] if args else None)


_stderr_lines: LineBuffer | None = None


def stderr_lines() -> LineBuffer:
    """The process's buffer for ``sys.stderr`` (made once, flushed at exit)."""
    global _stderr_lines
    if _stderr_lines is None or _stderr_lines.file is not sys.stderr.buffer:
        if _stderr_lines is not None:
            _stderr_lines.flush()
        _stderr_lines = LineBuffer(sys.stderr.buffer)
    return _stderr_lines


def flush_log_lines() -> None:
    """Write the lines still queued (at exit; tests that read stderr at once)."""
    if _stderr_lines is not None:
        _stderr_lines.flush()


def _discard_in_child() -> None:
    if _stderr_lines is not None:
        _stderr_lines.discard()


atexit.register(flush_log_lines)
os.register_at_fork(after_in_child=_discard_in_child)


class DecisionSink:
    """structlog processor: decision lines to a file of their own, one JSON object a line.

    Lines of the ``gateway.decision`` logger are appended, whole, with one
    ``write`` on an ``O_APPEND`` descriptor (several workers may share the file),
    with the same fields as on the main log. ``reopen`` (on SIGHUP) opens the path
    again, so logrotate may rename the file and signal, without ``copytruncate``.
    A line the file could not take stays on the main log, marked
    ``decision_file_error``, whatever ``main_log`` says; so does every line after a
    reopen that failed (the path's directory gone: the lines still go to the old
    file, which may be deleted), until a reopen succeeds.
    """

    def __init__(self, path: Path, *, main_log: bool = True, deny_only: bool = False) -> None:
        self.path = path
        self.main_log = main_log
        self.deny_only = deny_only
        self._fd = self._open()
        self._reopen_error: str | None = None  # errno name of the last reopen, if it failed

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.path, flags, 0o640)

    def reopen(self) -> None:
        """Open the path again (a rotated file is left to its new name), then close the old."""
        try:
            fresh = self._open()
        except OSError as exc:
            self._reopen_error = errno.errorcode.get(exc.errno or 0, "EIO")
            raise
        self._reopen_error = None
        old, self._fd = self._fd, fresh
        os.close(old)

    def close(self) -> None:
        os.close(self._fd)

    def __call__(self, logger: WrappedLogger, method: str, event_dict: EventDict) -> EventDict:
        if getattr(logger, "name", None) != DECISION_LOGGER:
            return event_dict
        if self.deny_only and event_dict.get("decision") != "deny":
            return self._main(event_dict)
        try:
            os.write(self._fd, orjson.dumps(event_dict, default=str) + b"\n")
        except OSError as exc:
            event_dict["decision_file_error"] = errno.errorcode.get(exc.errno or 0, "EIO")
            return event_dict
        if self._reopen_error is not None:  # written where nobody may read it again
            event_dict["decision_file_error"] = self._reopen_error
            return event_dict
        return self._main(event_dict)

    def _main(self, event_dict: EventDict) -> EventDict:
        if not self.main_log:
            raise structlog.DropEvent
        return event_dict


class _Sinks:
    decisions: DecisionSink | None = None


_sinks = _Sinks()


def open_decision_sink(settings: DecisionLogSettings | None) -> DecisionSink | None:
    """The configured sink (the previous one closed); ``ConfigError`` if the file cannot open."""
    if _sinks.decisions is not None:
        _sinks.decisions.close()
        _sinks.decisions = None
    if settings is None or settings.file is None:
        return None
    try:
        sink = DecisionSink(settings.file, main_log=settings.main_log, deny_only=settings.deny_only)
    except OSError as exc:
        where = f"log.decisions.file: cannot open {settings.file}"
        raise ConfigError(f"{where}: {exc.strerror}") from None
    _sinks.decisions = sink
    return sink


def reopen_log_files() -> None:
    """Reopen the decision log file, if there is one (logrotate's ``postrotate``: SIGHUP)."""
    sink = _sinks.decisions
    if sink is None:
        return
    try:
        sink.reopen()
    except OSError as exc:  # keep writing to the open file rather than lose lines
        structlog.get_logger("gateway.ops").error(
            "decision_log_reopen_failed", path=str(sink.path), error=exc.strerror
        )
        return
    structlog.get_logger("gateway.ops").info("decision_log_reopened", path=str(sink.path))


@asynccontextmanager
async def reopen_log_files_on_sighup() -> AsyncIterator[None]:
    """While open (the app lifespan): SIGHUP reopens the decision log file, when one is set."""
    if _sinks.decisions is None:
        yield
        return
    with on_sighup(reopen_log_files):
        yield


def _shared_processors() -> list[Processor]:
    return [
        logcontext.merge,
        add_trace_ids,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]


def configure_logging(
    level: str = "INFO",
    fmt: Literal["auto", "json", "console"] = "auto",
    *,
    cache: bool = True,
    decisions: DecisionLogSettings | None = None,
) -> None:
    """Configure structlog and stdlib logging once per process.

    ``decisions``: where decision lines go (``log.decisions``); a file that cannot
    be opened is a ``ConfigError``.
    """
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    shared = _shared_processors()
    sink = open_decision_sink(decisions)
    sinks: list[Processor] = [sink] if sink is not None else []
    native: list[Processor]
    if use_console:
        native = [*shared, *sinks, escape_controls, structlog.dev.ConsoleRenderer(), _to_bytes]
    else:
        native = [
            logcontext.merge,
            add_trace_ids,
            LevelNameTime(),  # = shared[2:], in one call
            structlog.processors.format_exc_info,
            *sinks,
            structlog.processors.JSONRenderer(serializer=_orjson_bytes),
        ]
    structlog.configure(
        processors=native,
        # BytesLogger carries the logger's name, which add_logger_name reads.
        logger_factory=BufferedBytesLoggerFactory(stderr_lines()),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        cache_logger_on_first_use=cache,
    )
    _route_stdlib(level, shared, use_console)


def _route_stdlib(level: str, shared: list[Processor], use_console: bool) -> None:
    """Send standard-library records (uvicorn, httpx) through the same chain."""
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if use_console:
        final.append(escape_controls)
        final.append(structlog.dev.ConsoleRenderer())
    else:
        final.append(structlog.processors.format_exc_info)
        final.append(structlog.processors.JSONRenderer(serializer=_orjson_dumps))
    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final)
    handler = BufferedStreamHandler(stderr_lines())
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # The edge logs each request with its corr_id; uvicorn's access line would duplicate it.
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    # OpenTelemetry warns once a request about a caller's malformed ``tracestate`` (which
    # it then drops, as W3C Trace Context allows), tracing on or off: any client could add
    # a line to the log per request it sends. Its errors still come through.
    logging.getLogger(OTEL_TRACESTATE_LOGGER).setLevel(logging.ERROR)
